"""Training jobs end to end: votes through recorded Label Studio webhooks, a training request,
a real `aesemo worker` process (RQ) that trains, writes and promotes a version; merging,
refusals, failed downloads, a worker killed with SIGKILL, cancelling, promotion and rollback.

Real pieces only: the session's redis-server, an image server on 127.0.0.1, and `aesemo`
subprocesses. One trained project (module-scoped) is shared by the tests; each training is
small (resnet18 at 40/35 pixels, one epoch unless a test needs a longer one).
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from PIL import Image

from backend.core import keys
from backend.cli import main as cli_main
from backend.training.queue import training_queue
from backend.serving.registry import project_versions_dir
from model.heldout import HELDOUT_SPLIT, held_out

from images_server import ImageServer
from training_project import (aesemo_command, environment, flip_a_byte, label_tasks, legacy_train_body,
                              log_tail, run_burst_worker, service_client, setup_answer, setup_project,
                              start_process, start_training_body, stop_process, write_small_version)
from net import wait_for

PROJECT = 1
GOOD_TASKS = range(1, 15)     # 14 images the server has
MISSING_TASKS = (15, 16)      # 2 that answer 404: 12.5 %, under the default 20 %


@dataclass
class Lab:
    root: Path
    env: dict
    settings: object
    client: object
    raw: redis.Redis
    images: ImageServer
    workers: list

    def stop_workers(self) -> None:
        while self.workers:
            stop_process(self.workers.pop())

    def queue_length(self) -> int:
        return training_queue(self.settings, self.raw).count

    def current(self, project: int = PROJECT) -> str | None:
        value = self.raw.get(keys.current_version(project))
        return value.decode() if value else None

    def job(self, job_id: str, project: int = PROJECT) -> dict:
        response = self.client.get(f"/projects/{project}/jobs/{job_id}")
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def version_dirs(self, project: int = PROJECT) -> list[str]:
        folder = project_versions_dir(self.settings, str(project))
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, redis_url):
    root = tmp_path_factory.mktemp("jobs")
    raw = redis.Redis.from_url(redis_url)
    raw.flushdb()
    with ImageServer("127.0.0.1") as images:
        env, settings, client = service_client(root / "data", redis_url, images.netloc)
        setup_project(client, PROJECT)
        urls = {t: images.url(f"/img/{t}.png") for t in GOOD_TASKS}
        urls.update({t: images.url(f"/gone/{t}.png") for t in MISSING_TASKS})
        label_tasks(client, PROJECT, urls)
        lab = Lab(root, env, settings, client, raw, images, [])
        try:
            yield lab
        finally:
            lab.stop_workers()
    raw.flushdb()


@pytest.fixture(scope="module")
def trained(lab):
    """Project 1 trained once through POST /projects/1/train and `aesemo worker --burst`."""
    answer = lab.client.post(f"/projects/{PROJECT}/train", json={"epochs": 1})
    assert answer.status_code == 202, answer.get_json()
    queued = lab.queue_length()
    started = time.monotonic()
    result = run_burst_worker(lab.env, lab.log("worker-first"))
    seconds = time.monotonic() - started
    print(f"first training through the worker: {seconds:.1f} s")
    assert result.returncode == 0, lab.log("worker-first").read_text()[-4000:]
    return {"answer": answer.get_json(), "queued": queued, "seconds": seconds}


# ----- refusals: nothing is queued ---------------------------------------------------------------

def test_too_few_consensus_labels_is_409_and_queues_nothing(lab):
    setup_project(lab.client, 2)
    response = lab.client.post("/projects/2/train")
    assert response.status_code == 409, response.get_json()
    assert "0 consensus-labelled" in response.get_json()["error"]
    # Label Studio's legacy /train: a 200 without `job`, since an error status would put the
    # backend into Label Studio's error state
    response = lab.client.post("/train", json=legacy_train_body(2))
    assert response.status_code == 200 and "job" not in response.get_json(), response.get_json()
    assert "0 consensus-labelled" in response.get_json()["error"]
    # the START_TRAINING event itself is fine: the answer says why no job was queued
    response = lab.client.post("/webhook", json=start_training_body(2))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["training"]["started"] is False
    assert "0 consensus-labelled" in response.get_json()["training"]["error"]

    label_tasks(lab.client, 2, {t: lab.images.url(f"/img/{t}.png") for t in (1, 2, 3)}, first_annotation=9001)
    response = lab.client.post("/projects/2/train", json={"epochs": 1})
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert "3 consensus-labelled" in error and "at least 5" in error and "AESEMO_MIN_TRAINING_LABELS" in error
    assert lab.queue_length() == 0
    listed = lab.client.get("/projects/2/jobs").get_json()["jobs"]
    assert [j["status"] for j in listed] == ["refused"] * 4, listed  # each request's refusal, no job


@pytest.mark.parametrize("params, words", [
    ({"epochs": 1, "momentum": 0.5}, ["unknown training parameters", "momentum"]),
    ({"epochs": -2}, ["epochs", "an integer in 1..1000"]),
    ({"epochs": 0}, ["epochs", "an integer in 1..1000"]),
    ({"epochs": 10 ** 400}, ["epochs", "an integer in 1..1000"]),
    ({"lr": -0.1}, ["lr", "a finite number in (0, 1]"]),
    ({"lr": float("inf")}, ["lr", "a finite number in (0, 1]"]),
    ({"lr": float("nan")}, ["lr", "a finite number in (0, 1]"]),
    ({"lr": 1e308}, ["lr", "a finite number in (0, 1]"]),
    ({"batch_size": 4096}, ["batch_size", "an integer in 1..1024"]),
    ({"epochs": "3"}, ["epochs", "an integer in 1..1000"]),
    ({"epochs": True}, ["epochs", "an integer in 1..1000"]),
    ({"backbone": "resnet9000"}, ["backbone must be one of", "resnet18"]),
    ([1, 2], ["JSON object"]),
])
def test_bad_training_parameters_are_400(lab, params, words):
    response = lab.client.post(f"/projects/{PROJECT}/train", json=params)
    assert response.status_code == 400, response.get_json()
    for word in words:
        assert word in response.get_json()["error"], response.get_json()
    assert lab.queue_length() == 0


# ----- a whole training ------------------------------------------------------------------------

def test_training_through_a_real_worker_writes_reports_and_promotes(lab, trained, capsys):
    answer = trained["answer"]
    assert answer["merged"] is False and answer["state"] == "queued"
    assert trained["queued"] == 1
    job_id = answer["job_id"]

    listing = lab.client.get(f"/projects/{PROJECT}/jobs")
    assert listing.status_code == 200
    jobs = listing.get_json()["jobs"]
    assert [j["job_id"] for j in jobs] == [job_id]
    job = lab.job(job_id)
    assert jobs[0]["status"] == job["status"] == "finished", job
    progress = job["progress"]
    assert progress["state"] == "finished"
    for key in ("epoch", "epochs", "step", "steps", "loss"):
        assert key in progress, (key, progress)
    assert progress["epoch"] == 1 and progress["epochs"] == 1 and progress["loss"] > 0
    assert "eta_s" not in progress and "title" not in progress   # nothing left to wait for
    result = job["result"]
    # every stage's time, in order; the training says how it ended and why it did not stop early
    stages = ["snapshot", "images", "parent", "training", "report", "promotion"]
    assert [s["name"] for s in result["stages"]] == [s["name"] for s in progress["stages"]] == stages
    assert all(s["seconds"] >= 0 and s["title"] for s in result["stages"])
    assert result["stopping"].startswith("ran its one epoch; kept ")
    assert progress["stopping"] == result["stopping"]
    version = result["version"]
    assert result["promoted"] is True and result["promotion"].startswith("first trained version (held-out macro-F1 ")
    assert result["parent"].startswith("base-resnet18-")
    assert result["device"] == "cpu" and result["training_seconds"] > 0
    assert result["snapshot"]["rows"] == len(GOOD_TASKS) + len(MISSING_TASKS)
    assert set(result["metrics"]) == {"aesthetic", "emotion"}
    assert job["params"] == {"epochs": 1} and job["requests"] == 1
    assert job["started_at"] and job["ended_at"]

    folder = project_versions_dir(lab.settings, str(PROJECT)) / version
    assert (folder / "weights.safetensors").is_file()
    meta = json.loads((folder / "model.json").read_text())
    assert meta["parent_version"] == result["parent"]
    assert meta["snapshot_id"] == result["snapshot"]["id"]
    assert meta["job_id"] == job_id
    assert set(meta["metrics"]) == {"aesthetic", "emotion"}
    for task in ("aesthetic", "emotion"):
        assert {"accuracy", "macro_f1", "confusion"} <= set(meta["metrics"][task])
    assert meta["training"]["seconds"] > 0 and meta["training"]["device"] == "cpu"
    assert meta["crop_size"] == 35 and meta["train_size"] == 40
    report = json.loads((folder / "report" / "metrics.json").read_text())
    assert set(report["metrics"]) == {"aesthetic", "emotion"} and report["history"]
    # the project's hashed held-out tasks are marked in the job's manifest, and never trained on
    rows = [json.loads(line) for line in Path(meta["training"]["manifest"]).read_text().splitlines()[1:]]
    held = [r for r in rows if held_out(str(PROJECT), r["task"], lab.settings.heldout_fraction)]
    assert [r for r in rows if r.get("split") == HELDOUT_SPLIT] == held
    if held:
        assert meta["training"]["val_size"] == len(held) and meta["training"]["train_size"] == len(rows) - len(held)
        # under AESEMO_MIN_HELDOUT held-out tasks: no early stopping on them, and the job says so
        assert result["stopping"].endswith("too few to stop early on"), result["stopping"]
    for task in ("aesthetic", "emotion"):
        with Image.open(folder / "report" / f"confusion_{task}.png") as png:
            assert png.format == "PNG" and png.size[0] > 100
            png.verify()
    assert not list(folder.parent.glob(".*partial"))  # the staging folder was renamed

    assert lab.current() == version
    versions = lab.client.get(f"/projects/{PROJECT}/versions").get_json()
    assert versions["current"] == version
    assert [(v["version"], v["current"]) for v in versions["versions"]] == [(version, True)]
    assert versions["versions"][0]["parent"] == result["parent"]
    assert setup_answer(lab.client, PROJECT) == version

    # the command line sees the same jobs and versions, and promotes (its main(), in this process:
    # a subprocess would spend most of its time importing torch on a loaded machine)
    outputs = {}
    with environment(lab.env):
        for name, args in (("jobs", ["jobs", str(PROJECT)]), ("versions", ["versions", str(PROJECT)]),
                           ("promote", ["promote", str(PROJECT), version])):
            capsys.readouterr()
            assert cli_main(args) == 0, capsys.readouterr().err
            outputs[name] = json.loads(capsys.readouterr().out)
    assert outputs["jobs"]["jobs"][0]["job_id"] == job_id and outputs["jobs"]["jobs"][0]["status"] == "finished"
    assert outputs["versions"]["current"] == version
    refresh = outputs["promote"].pop("refresh")  # a promotion queues a prediction refresh
    assert outputs["promote"] == {"project": str(PROJECT), "current": version, "previous": version}
    assert refresh["state"] == "queued"


def test_failed_downloads_are_skipped_and_counted_then_fatal_over_the_threshold(lab, trained):
    result = lab.job(trained["answer"]["job_id"])["result"]
    assert result["images"]["used"] == len(GOOD_TASKS)
    assert result["images"]["failed"] == len(MISSING_TASKS)
    failures = result["images"]["failures"]
    assert len(failures) == 2 and all("404" in f for f in failures), failures
    assert {f.split(":")[0] for f in failures} == {f"task {t}" for t in MISSING_TASKS}

    # the same project with at most 5 % of failed downloads allowed: 2 of 16 is too many
    served, folders = lab.current(), lab.version_dirs()
    answer = lab.client.post(f"/projects/{PROJECT}/train").get_json()
    run = run_burst_worker({**lab.env, "AESEMO_MAX_FAILED_IMAGES": "0.05"}, lab.log("worker-threshold"))
    assert run.returncode == 0, lab.log("worker-threshold").read_text()[-3000:]
    job = lab.job(answer["job_id"])
    assert job["status"] == "failed", job
    assert "2 of 16 images could not be fetched" in job["error"], job["error"]
    assert job["progress"]["state"] == "failed"
    # the stage it failed in is named and timed, beside the ones before it
    assert job["progress"]["failed_in"] == "images"
    assert [s["name"] for s in job["progress"]["stages"]] == ["snapshot", "images"]
    assert lab.current() == served and lab.version_dirs() == folders


def test_a_loss_gone_nan_fails_the_job_and_promotes_nothing(lab, trained, monkeypatch):
    """The job runs in an RQ SimpleWorker in this process, so that its loss can be made NaN."""
    from backend.training.worker import run_worker
    from model import train as train_module
    original = train_module.two_task_loss

    def poisoned(*args, **kwargs):
        parts = original(*args, **kwargs)
        return dataclasses.replace(parts, total=parts.total * float("nan"))
    monkeypatch.setattr(train_module, "two_task_loss", poisoned)
    served, folders = lab.current(), lab.version_dirs()
    answer = lab.client.post(f"/projects/{PROJECT}/train", json={"epochs": 2})
    assert answer.status_code == 202, answer.get_json()
    with environment(lab.env):
        run_worker(burst=True)
    job = next(j for j in lab.client.get(f"/projects/{PROJECT}/jobs").get_json()["jobs"]
               if j["job_id"] == answer.get_json()["job_id"])
    assert job["status"] == "failed", job
    assert "TrainingDiverged" in job["error"] and "the loss became nan at epoch 1, step 1" in job["error"], job
    assert job["progress"]["state"] == "failed"
    assert lab.current() == served and lab.version_dirs() == folders
    assert lab.raw.get(keys.running_job(PROJECT)) is None


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["model.version.save_file", "backend.training.job.write_report"],
                         ids=["weights", "report"])
def test_a_full_disk_fails_the_job_and_leaves_no_staging_folder(lab, monkeypatch, where):
    """The job runs in an RQ SimpleWorker in this process, so that its writing can fail."""
    from backend.training.worker import run_worker
    monkeypatch.setattr(where, disk_full)
    served, folders = lab.current(), lab.version_dirs()
    answer = lab.client.post(f"/projects/{PROJECT}/train", json={"epochs": 1})
    assert answer.status_code == 202, answer.get_json()
    with environment(lab.env):
        run_worker(burst=True)
    job = lab.job(answer.get_json()["job_id"])
    assert job["status"] == "failed" and "No space left on device" in job["error"], job
    assert not [name for name in lab.version_dirs() if name.endswith(".partial")], lab.version_dirs()
    assert lab.version_dirs() == folders
    assert lab.current() == served


# ----- one pending job at most; cancelling --------------------------------------------------------

@pytest.fixture(scope="module")
def busy(lab, trained):
    """Requests merged into one pending job A, a worker started on it, then a request that makes
    a new pending job B. Yields what was answered; stops the worker afterwards."""
    steps = {"served": lab.current(), "folders": lab.version_dirs()}
    first = lab.client.post("/webhook", json=start_training_body(PROJECT))
    # a longer job for A (the latest request's parameters win), so that it can be cancelled mid-way
    second = lab.client.post(f"/projects/{PROJECT}/train", json={"epochs": 3, "batch_size": 4})
    third = lab.client.post("/webhook", json=start_training_body(PROJECT))
    legacy = lab.client.post("/train", json=legacy_train_body(PROJECT))
    steps.update(first=first, second=second, third=third, legacy=legacy, queued_before=lab.queue_length())
    job_a = first.get_json()["training"]["job_id"]

    worker = start_process(aesemo_command("worker"), lab.env, lab.log("worker-busy"))
    lab.workers.append(worker)
    try:
        wait_for(lambda: lab.job(job_a)["status"] == "started", 300, what=f"job {job_a} to start")
        steps["after_start"] = lab.client.post(f"/projects/{PROJECT}/train", json={"epochs": 1})
        steps["after_start_again"] = lab.client.post(f"/projects/{PROJECT}/train", json={"lr": 0.01})
        steps["queued_after"] = lab.queue_length()
        steps["worker"] = worker
        yield steps
    finally:
        stop_process(worker)
        print(log_tail(worker, 1500))


def test_requests_merge_into_one_pending_job(lab, busy):
    first, second, third, legacy = (busy[k] for k in ("first", "second", "third", "legacy"))
    assert first.status_code == 200, first.get_json()
    training = first.get_json()["training"]
    assert training["merged"] is False and training["state"] == "queued"
    job_a = training["job_id"]
    assert second.status_code == 202 and second.get_json()["merged"] is True
    assert second.get_json()["job_id"] == job_a and "merged into pending job" in second.get_json()["message"]
    assert third.get_json()["training"]["merged"] is True and third.get_json()["training"]["job_id"] == job_a
    assert legacy.status_code == 202 and legacy.get_json()["job_id"] == job_a
    assert busy["queued_before"] == 1

    # A has started: the next request is a new pending job, and the one after merges into it
    after, again = busy["after_start"], busy["after_start_again"]
    assert after.status_code == 202 and after.get_json()["merged"] is False
    job_b = after.get_json()["job_id"]
    assert job_b != job_a and job_a in after.get_json()["message"]  # "to run after <A>"
    assert again.get_json()["merged"] is True and again.get_json()["job_id"] == job_b
    assert busy["queued_after"] == 1

    described = lab.job(job_a)
    assert described["requests"] == 4 and described["params"] == {"epochs": 3, "batch_size": 4}
    assert lab.job(job_b)["params"] == {"epochs": 1, "lr": 0.01} and lab.job(job_b)["status"] == "queued"


def test_cancel_a_queued_job_and_a_running_one(lab, busy):
    job_a = busy["first"].get_json()["training"]["job_id"]
    job_b = busy["after_start"].get_json()["job_id"]

    cancelled = lab.client.post(f"/projects/{PROJECT}/jobs/{job_b}/cancel")
    assert cancelled.status_code == 200, cancelled.get_json()
    assert cancelled.get_json()["status"] == "cancelled"
    assert cancelled.get_json()["error"] == "cancelled before it started"
    assert lab.queue_length() == 0

    wait_for(lambda: lab.job(job_a)["progress"].get("state") == "training" and "step" in lab.job(job_a)["progress"],
             180, what=f"job {job_a} to train")
    at_cancel = lab.job(job_a)["progress"]
    answer = lab.client.post(f"/projects/{PROJECT}/jobs/{job_a}/cancel")
    assert answer.status_code == 200 and answer.get_json()["status"] == "started"
    ended = wait_for(lambda: (lambda j: j if j["status"] != "started" else None)(lab.job(job_a)), 120,
                     what=f"job {job_a} to stop")
    assert ended["status"] == "cancelled", ended
    assert "cancelled" in ended["error"], ended["error"]
    assert ended["progress"]["state"] == "failed"
    done = (ended["progress"]["epoch"] - 1) * ended["progress"]["steps"] + ended["progress"]["step"]
    total = ended["progress"]["epochs"] * ended["progress"]["steps"]
    print(f"cancelled at epoch {at_cancel['epoch']} step {at_cancel['step']}; stopped after {done} of {total} steps")
    assert done < total
    assert lab.current() == busy["served"] and lab.version_dirs() == busy["folders"]

    for job_id in (job_a, job_b):  # finished business: nothing left to cancel
        again = lab.client.post(f"/projects/{PROJECT}/jobs/{job_id}/cancel")
        assert again.status_code == 409, again.get_json()
    assert lab.client.post(f"/projects/{PROJECT}/jobs/train-1-nope/cancel").status_code == 404
    assert lab.client.get(f"/projects/2/jobs/{job_a}").status_code == 404  # another project's job
    assert busy["worker"].poll() is None  # the worker itself lives on (the next test kills it)


# ----- a worker killed mid-training ---------------------------------------------------------------

def test_worker_killed_with_sigkill_fails_the_job_and_a_new_one_trains(lab, trained, busy):
    worker = busy["worker"]  # already started (importing torch takes a while here): the one to kill
    for job_id in (busy["first"].get_json()["training"]["job_id"], busy["after_start"].get_json()["job_id"]):
        lab.client.post(f"/projects/{PROJECT}/jobs/{job_id}/cancel")  # 409 when already done
        wait_for(lambda job_id=job_id: lab.job(job_id)["status"] not in ("queued", "started"), 120, what=f"{job_id} to end")
    assert lab.queue_length() == 0 and worker.poll() is None
    served, folders = lab.current(), lab.version_dirs()
    job_k = lab.client.post(f"/projects/{PROJECT}/train", json={"epochs": 3, "batch_size": 4}).get_json()["job_id"]
    wait_for(lambda: lab.job(job_k)["progress"].get("state") == "training", 180, what="training to start")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    killed_at = time.monotonic()
    lab.stop_workers()
    assert lab.job(job_k)["status"] == "started"  # RQ cannot know yet

    # The worker's heartbeat stops; once its TTL (3 x AESEMO_JOB_HEARTBEAT + 5 s) has passed,
    # RQ's StartedJobRegistry cleanup (run by GET .../jobs/<id>) moves the job to failed.
    failed = wait_for(lambda: (lambda j: j if j["status"] != "started" else None)(lab.job(job_k)), 60,
                      interval=0.5, what="the killed worker's job to be reported")
    print(f"killed worker's job reported {failed['status']} after {time.monotonic() - killed_at:.1f} s: "
          f"{failed['error']}")
    assert failed["status"] == "failed"
    assert "worker running this job died" in failed["error"] and "AbandonedJobError" in failed["error"]
    assert lab.current() == served
    assert [v for v in lab.version_dirs() if not v.startswith(".")] == [v for v in folders if not v.startswith(".")]
    # the dead job's training lock is still there: the next job must not wait for its expiry
    assert lab.raw.get(keys.training_lock(PROJECT)) == job_k.encode()

    answer = lab.client.post(f"/projects/{PROJECT}/train", json={"epochs": 1})
    assert answer.status_code == 202 and answer.get_json()["merged"] is False
    # the dead job's running key is still there too: it is no reason to say "to run after" it
    assert answer.get_json()["message"] == f"queued job {answer.get_json()['job_id']}", answer.get_json()
    assert lab.raw.get(keys.running_job(PROJECT)) is None
    started = time.monotonic()
    run = run_burst_worker({**lab.env, "AESEMO_PROMOTION": "always"}, lab.log("worker-after-kill"))
    seconds = time.monotonic() - started
    log = lab.log("worker-after-kill").read_text()
    assert run.returncode == 0, log[-3000:]
    assert f"released project {PROJECT}'s training lock: its holder {job_k} is no longer running" in log
    job = lab.job(answer.get_json()["job_id"])
    assert job["status"] == "finished", job
    assert job["result"]["promoted"] is True and job["result"]["parent"] == served
    assert lab.current() == job["result"]["version"] != served
    print(f"training after the kill: {seconds:.1f} s")
    assert lab.raw.get(keys.training_lock(PROJECT)) is None
    assert lab.job(job_k)["status"] == "failed"


# ----- promotion and rollback ---------------------------------------------------------------------

def test_promote_and_rollback_and_refuse_corrupted_weights(lab, trained):
    first = lab.job(trained["answer"]["job_id"])["result"]["version"]
    other = "v0900-manual"
    write_small_version(project_versions_dir(lab.settings, str(PROJECT)) / other, seed=5,
                        parent_version=first)
    for target in (other, first, other, first):  # promote, roll back, and again
        answer = lab.client.post(f"/projects/{PROJECT}/versions/{target}/promote")
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["current"] == target
        assert lab.current() == target
        assert setup_answer(lab.client, PROJECT) == target
        versions = lab.client.get(f"/projects/{PROJECT}/versions").get_json()
        assert versions["current"] == target
        assert [v["version"] for v in versions["versions"] if v["current"]] == [target]

    for unknown in ("v9999-none", ".v0001.partial", "..", "base-resnet18-random"):
        answer = lab.client.post(f"/projects/{PROJECT}/versions/{unknown}/promote")
        assert answer.status_code == 404, (unknown, answer.get_json())
    assert lab.current() == first

    flip_a_byte(project_versions_dir(lab.settings, str(PROJECT)) / other / "weights.safetensors")
    answer = lab.client.post(f"/projects/{PROJECT}/versions/{other}/promote")
    assert answer.status_code == 409, answer.get_json()
    assert "sha256" in answer.get_json()["error"] and other in answer.get_json()["error"]
    assert lab.current() == first
    assert setup_answer(lab.client, PROJECT) == first
