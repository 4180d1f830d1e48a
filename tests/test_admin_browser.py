"""The admin page in a real browser: headless Chromium (Debian's, driven by Playwright) against a
running `aesemo serve` with Basic auth on, the session's real redis-server and a real `aesemo
worker`. It rolls back to an older version, starts a training job with the button, watches the
job's progress without reloading by hand, and sees the new version once the job ends. The progress
it watches is written into the queued job before the worker starts, so no test counts on training
being slow enough to be seen.

Screenshots go to $AESEMO_TEST_ARTIFACTS when it is set (to look at them), else to tmp_path.
"""
from __future__ import annotations

import signal

import pytest
import redis
import requests

from backend.core import keys
from backend.serving.registry import project_versions_dir, set_current_version
from backend.training.queue import training_queue
from rq.job import Job

from chromium import artifacts_dir, chromium_page, sync_api
from images_server import ImageServer
from training_project import (aesemo_command, label_tasks, log_tail, service_client, setup_project,
                              start_process, stop_process, write_reported_version)
from net import free_port, wait_for

PROJECT = 4
OLD, NEW = "v0001-20261101000000", "v0002-20261102000000"
USER, PASSWORD = "admin", "page-test-password"


def write_version(settings, name: str, accuracy: float, created_at: str) -> None:
    write_reported_version(project_versions_dir(settings, str(PROJECT)) / name, accuracy, created_at)


@pytest.fixture(scope="module")
def running(tmp_path_factory, redis_url):
    """A labelled project with two versions (the newer current), `aesemo serve` and `aesemo worker`."""
    root = tmp_path_factory.mktemp("admin-browser")
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    raw.flushdb()
    with ImageServer("127.0.0.1") as images:
        env, settings, client = service_client(root / "data", redis_url, images.netloc, AESEMO_SWAP_POLL="1",
                                               BASIC_AUTH_USER=USER, BASIC_AUTH_PASS=PASSWORD,
                                               AESEMO_TRAIN_PATIENCE="0")
        auth = {"auth": (USER, PASSWORD)}
        setup_project(_Authorized(client, auth), PROJECT)
        label_tasks(_Authorized(client, auth), PROJECT, {t: images.url(f"/img/{t}.png") for t in range(1, 13)})
        write_version(settings, OLD, 0.70, "2026-11-01T00:00:00+00:00")
        write_version(settings, NEW, 0.90, "2026-11-02T00:00:00+00:00")
        set_current_version(raw, str(PROJECT), NEW)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve = start_process(aesemo_command("serve", "--host", "127.0.0.1", "--port", str(port),
                                             "--workers", "1", "--threads", "4"), env, root / "serve.log")
        processes = {"serve": serve}

        def start_worker():
            processes["worker"] = start_process(aesemo_command("worker"), env, root / "worker.log")
            return processes["worker"]
        try:
            def healthy():
                assert serve.poll() is None, log_tail(serve)
                try:
                    return requests.get(f"{url}/health", auth=(USER, PASSWORD), timeout=10).status_code == 200
                except requests.RequestException:
                    return False
            wait_for(healthy, 300, interval=1.0, what="aesemo serve to answer")
            yield {"url": url, "raw": raw, "settings": settings, "root": root, "serve": serve,
                   "start_worker": start_worker}
        finally:
            if "worker" in processes:
                stop_process(processes["worker"], sig=signal.SIGINT)
                print(log_tail(processes["worker"], 3000))
            stop_process(serve, sig=signal.SIGINT)
    raw.flushdb()


class _Authorized:
    """The Flask test client with Basic credentials on every POST (the helpers post bodies)."""

    def __init__(self, client, auth):
        self.client, self.auth = client, auth

    def post(self, path, **kwargs):
        return self.client.post(path, **kwargs, **self.auth)


@pytest.fixture
def browser_page(running, tmp_path):
    with chromium_page(artifacts_dir(tmp_path), http_credentials={"username": USER, "password": PASSWORD},
                       viewport={"width": 1280, "height": 900}) as page:
        page.problems = []  # console errors, failed requests, requests that leave 127.0.0.1
        page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: page.problems.append(f"failed: {r.url} {r.failure}"))
        page.on("request", lambda r: r.url.startswith(running["url"]) or page.problems.append(f"left: {r.url}"))
        yield page


def write_progress(running, progress: dict) -> None:
    """What the worker's _Progress writes, into the one queued job."""
    queue = training_queue(running["settings"])
    (job_id,) = queue.job_ids
    job = Job.fetch(job_id, connection=queue.connection)
    job.meta["progress"] = {**job.meta.get("progress", {}), **progress}
    job.save_meta()


def current_version(running) -> str | None:
    return running["raw"].get(keys.current_version(PROJECT))


def test_roll_back_then_train_with_live_progress(running, browser_page):
    page, url = browser_page, running["url"]
    page.goto(f"{url}/?project={PROJECT}")
    assert page.locator("#current-version").inner_text() == NEW
    page.screenshot(path=str(page.artifacts / "admin-before.png"), full_page=True)

    # roll back: the button promotes the older version once confirmed, the page reloads and says so
    dialogs = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    page.locator(f'tr[data-version="{OLD}"] button.promote').click()
    # locator waits, not wait_for_function: the page's CSP refuses the eval that one needs
    sync_api.expect(page.locator("#current-version")).to_have_text(OLD, timeout=30_000)
    assert current_version(running) == OLD
    assert page.locator(f'tr[data-version="{OLD}"] .badge').inner_text() == "current"
    assert dialogs and OLD in dialogs[0]
    # the message outlives the reload, until dismissed
    assert f"Version {OLD} is now current." in page.locator("#message").inner_text()
    page.locator("#message .dismiss").click()
    assert page.locator("#message").is_hidden()

    # pin the newer version: retention keeps it, the row says so, the button turns into Unpin
    page.locator(f'tr[data-version="{NEW}"] button.pin').click()
    sync_api.expect(page.locator(f'tr[data-version="{NEW}"] .badge.pinned')).to_have_text("pinned", timeout=30_000)
    assert NEW in running["raw"].smembers(keys.pinned_versions(PROJECT))
    assert page.locator(f'tr[data-version="{NEW}"] button.pin').inner_text() == "Unpin"
    assert "kept: pinned" in page.locator(f'tr[data-version="{NEW}"]').inner_text()
    page.locator("#message .dismiss").click()

    # start training: a job card appears (queued, no worker yet); progress written into the job's
    # meta as the worker writes it shows up with no reload by hand
    page.locator("#epochs").fill("1")
    page.locator("#start-training").click()
    page.wait_for_selector(".job", timeout=30_000)
    write_progress(running, {"state": "training", "stage": "training", "epoch": 1, "epochs": 1,
                             "step": 1, "steps": 2, "loss": 0.5, "eta_s": 30})
    sync_api.expect(page.locator(".job .epoch").first).to_have_text("epoch 1/1", timeout=30_000)
    detail = page.locator(".job").first.inner_text()
    assert "ETA" in detail and "loss 0.500" in detail, detail
    assert float(page.locator(".job progress").first.get_attribute("value")) == 0.5
    page.screenshot(path=str(page.artifacts / "admin-training.png"), full_page=True)

    # the worker runs the job; the card goes away when it ends
    worker = running["start_worker"]()
    def no_job_card():
        try:
            return page.locator(".job").count() == 0
        except sync_api.Error:  # the page is reloading itself right now
            return False
    try:
        wait_for(no_job_card, 300, interval=0.2, what="the job card to go away")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{log_tail(worker)}") from None

    # the page reloaded itself when the job ended: the new version is listed and the job is recent
    page.wait_for_selector("#recent-jobs", timeout=30_000)
    versions = sorted(p.name for p in project_versions_dir(running["settings"], str(PROJECT)).iterdir()
                      if not p.name.startswith("."))
    assert len(versions) == 3, versions
    newest = versions[-1]
    assert page.locator(f'tr[data-version="{newest}"]').count() == 1
    outcome = page.locator("#recent-jobs tbody tr").first.inner_text()
    assert "finished" in outcome and newest in outcome, outcome
    page.screenshot(path=str(page.artifacts / "admin-after.png"), full_page=True)
    assert page.problems == []


def test_a_refused_training_request_shows_the_reason(running, browser_page, tmp_path):
    """Too few consensus labels (the threshold raised for this server): 409, and its message."""
    page, url = browser_page, running["url"]
    running["raw"].delete(keys.votes(PROJECT))  # no votes at all: nothing to train on
    page.goto(f"{url}/?project={PROJECT}")
    page.locator("#start-training").click()
    page.wait_for_selector("#message.error", timeout=30_000)
    assert "consensus-labelled tasks" in page.locator("#message").inner_text()
    # the page reloads: the refusal is listed among the recent jobs, the message still shown
    page.wait_for_selector("#recent-jobs tr.job-refused", timeout=30_000)
    assert "consensus-labelled tasks" in page.locator("#message").inner_text()
    page.screenshot(path=str(page.artifacts / "admin-refused.png"), full_page=True)
    assert page.locator("#start-training").is_enabled()  # can be tried again
