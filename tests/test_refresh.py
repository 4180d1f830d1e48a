"""The prediction refresh (backend/serving/refresh.py) against a loopback fake of the three Label
Studio endpoints it calls, with the session's real Redis; its queue and the prediction store."""
from __future__ import annotations

import json
from importlib import resources
from urllib.parse import parse_qs, urlparse

import pytest

from backend.core import keys
from backend.labelstudio.label_config import parse_label_config
from backend.labelstudio.projects import ProjectStore
from backend.serving import prediction_store
from backend.serving.refresh_queue import cancel_refresh, refresh_jobs, submit_refresh
from backend.serving.suggestion_text import shown_as_text, suggestion_text
from backend.votes.control import is_control_task
from backend.votes.shown import shown_for
from json_server import JsonHandler, LoopbackServer
from ls_examples import example
from training_project import environment, service_env, settings_for

pytestmark = pytest.mark.torch

TOKEN = "fake-ls-token-0123456789"


class FakeLabelStudio:
    """GET /api/tasks (paged; with fields=all each task lists its predictions, as Label Studio's
    does), POST /api/dm/actions?id=delete_tasks_predictions, POST /api/projects/P/import/predictions:
    the predictions it holds, per task; GET /api/tasks/T, and PATCH /api/tasks/T, which replaces a
    task's data whole, as Label Studio 1.23.2 does."""

    def __init__(self, tasks: list[dict]):
        self.tasks = tasks
        self.predictions: dict[int, list[dict]] = {t["id"]: [{"model_version": "old"}] for t in tasks}
        self.calls: list[str] = []
        self.after_listing = lambda: None     # a change made in Label Studio once the job has listed
        fake = self

        class Handler(JsonHandler):
            def do_GET(self):
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    return self.answer(401, {"detail": "no"})
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.calls.append(f"GET {url.path}")
                if url.path.rstrip("/") != "/api/tasks":     # one task
                    return self.answer(200, next(t for t in fake.tasks if url.path == f"/api/tasks/{t['id']}"))
                page, size = int(query["page"]), int(query["page_size"])
                listed = fake.tasks[(page - 1) * size:page * size]
                if query.get("fields") == "all":
                    listed = [{**t, "predictions": fake.predictions[t["id"]]} for t in listed]
                self.answer(200, {"tasks": listed, "total": len(fake.tasks)})
                fake.after_listing()

            def do_POST(self):
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    return self.answer(401, {"detail": "no"})
                url = urlparse(self.path)
                body = self.json_body()
                fake.calls.append(f"POST {url.path}")
                if url.path == "/api/dm/actions":
                    for task in body["selectedItems"]["included"]:
                        fake.predictions[task] = []
                    return self.answer(200, {"detail": "deleted"})
                for prediction in body:
                    fake.predictions[prediction["task"]].append(prediction)
                self.answer(201, {"created": len(body)})

            def do_PATCH(self):
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    return self.answer(401, {"detail": "no"})
                path = urlparse(self.path).path.rstrip("/")
                fake.calls.append(f"PATCH {path}")
                task = next(t for t in fake.tasks if path == f"/api/tasks/{t['id']}")
                task["data"] = self.json_body()["data"]
                self.answer(200, task)

        self.server = LoopbackServer(Handler)
        self.url = self.server.url

    def close(self):
        self.server.close()


@pytest.fixture
def lab(tmp_path, redis_url, redis_client, images):
    tasks = [{"id": i, "data": {"image": images.url(f"/img/{i}.png")}, "is_labeled": i in (2, 5)}
             for i in range(1, 8)]
    studio = FakeLabelStudio(tasks)
    env = service_env(tmp_path / "data", redis_url, images.netloc, LABEL_STUDIO_URL=studio.url,
                      LABEL_STUDIO_API_KEY=TOKEN, AESEMO_REFRESH_BATCH="2")
    ProjectStore(redis_client).remember_setup("1", example("predict.json")["label_config"], None, None)
    yield env, studio, redis_client
    studio.close()


def refresh(env: dict) -> dict:
    from backend.serving.refresh import refresh_project
    with environment(env):
        return refresh_project("1")


def test_unlabelled_tasks_get_the_current_version_and_labelled_ones_keep_theirs(lab):
    env, studio, client = lab
    result = refresh(env)
    version = result["version"]
    assert (result["tasks"], result["written"], result["failed"]) == (5, 5, 0)
    for task, predictions in studio.predictions.items():
        if task in (2, 5):
            assert predictions == [{"model_version": "old"}]
        else:  # the old one deleted (AESEMO_REFRESH_KEEP_OLD off), one of the current version
            assert [p["model_version"] for p in predictions] == [version]
            assert predictions[0]["result"] and isinstance(predictions[0]["score"], float)
    assert studio.calls.count("POST /api/projects/1/import/predictions") == 3  # batches of 2
    # what the job computed is stored for /predict
    assert set(prediction_store.stored_predictions(client, "1", version, {1: studio.tasks[0]["data"]["image"]})) == {1}


def test_a_rerun_skips_the_tasks_already_written_for_that_version(lab):
    env, studio, client = lab
    version = refresh(env)["version"]
    studio.predictions[3] = [{"model_version": "old"}]  # as if the job had stopped before task 3
    studio.calls.clear()
    again = refresh(env)
    assert (again["tasks"], again["written"]) == (1, 1)
    assert [p["model_version"] for p in studio.predictions[3]] == [version]


def test_a_version_promoted_again_rewrites_what_label_studio_holds_now(lab):
    """Label Studio says what a task holds, not the memory of an earlier run: after another
    version's predictions replaced these, the same version written again reaches every task."""
    env, studio, client = lab
    version = refresh(env)["version"]
    for task in studio.predictions:
        if task not in (2, 5):
            studio.predictions[task] = [{"model_version": "v0002-other"}]
    again = refresh(env)
    assert (again["version"], again["tasks"], again["written"]) == (version, 5, 5)
    assert all([p["model_version"] for p in studio.predictions[t]] == [version] for t in (1, 3, 4, 6, 7))


def test_with_old_predictions_kept_a_task_holding_this_version_is_not_written_twice(lab):
    env, studio, _ = lab
    keep = {**env, "AESEMO_REFRESH_KEEP_OLD": "1"}
    version = refresh(keep)["version"]
    again = refresh(keep)
    assert (again["tasks"], again["written"]) == (0, 0)
    assert [p["model_version"] for p in studio.predictions[1]] == ["old", version]


def test_old_predictions_are_kept_when_asked(lab):
    env, studio, _ = lab
    version = refresh({**env, "AESEMO_REFRESH_KEEP_OLD": "1"})["version"]
    assert [p["model_version"] for p in studio.predictions[1]] == ["old", version]
    assert "POST /api/dm/actions" not in studio.calls


def test_a_version_promoted_during_the_run_stops_it(lab, monkeypatch):
    env, studio, client = lab
    from backend.serving import refresh as module
    real = module._refresh_batch

    def then_promote(run, *args):
        answer = real(run, *args)
        client.set(keys.current_version("1"), "v0009-newer")
        return answer
    monkeypatch.setattr(module, "_refresh_batch", then_promote)
    result = refresh(env)
    assert result["superseded"] and result["written"] == 2


def test_requests_merge_into_one_pending_job_and_cancel(lab):
    env, _, client = lab
    settings = settings_for(env)
    first = submit_refresh(settings, "1", "predict", [3, 4])
    second = submit_refresh(settings, "1", "predict", [4, 6])
    assert second == {"job_id": first["job_id"], "state": "queued", "merged": True}
    [listed] = refresh_jobs(settings, "1")
    assert listed["task_ids"] == 3 and listed["reasons"] == ["predict", "predict"]
    submit_refresh(settings, "1", "promotion of v0002")  # the whole project widens it
    assert refresh_jobs(settings, "1")[0]["task_ids"] == "all"
    cancelled = cancel_refresh(settings, "1", first["job_id"])
    assert cancelled["status"] == "cancelled"
    assert client.get(keys.refresh_pending("1")) is None
    assert submit_refresh(settings, "1", "again")["merged"] is False


def test_a_skipped_refresh_shows_as_skipped_with_its_reason_on_the_page(lab):
    from backend.http.app import create_app
    from backend.training.worker import run_worker
    env, _, _ = lab
    env = {k: v for k, v in env.items() if k not in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")}
    submit_refresh(settings_for(env), "1", "project connected")
    with environment(env):
        run_worker(burst=True)
    page = create_app(settings_for(env)).test_client().get("/?project=1").get_data(as_text=True)
    row = page[page.index('id="refresh-jobs"'):]
    assert "<td>skipped</td>" in row and "nothing written: no Label Studio address or token" in row, row[:2000]


def test_the_worker_serves_the_predict_queue(lab):
    env, studio, _ = lab
    from backend.training.worker import run_worker
    settings = settings_for(env)
    job_id = submit_refresh(settings, "1", "project connected")["job_id"]
    with environment(env):
        run_worker(burst=True)
    [job] = refresh_jobs(settings, "1")
    assert job["job_id"] == job_id and job["status"] == "finished", job
    assert job["progress"]["state"] == "finished" and job["progress"]["written"] == 5


def test_admin_api_queues_lists_and_cancels_and_the_page_shows_it(lab, settings):
    from dataclasses import replace
    from backend.http.app import create_app
    env, _, _ = lab
    app = create_app(replace(settings_for(env), suggest_untrained=True))
    client = app.test_client()
    queued = client.post("/projects/1/refresh")
    assert queued.status_code == 200, queued.get_data(as_text=True)
    job_id = queued.get_json()["job_id"]
    assert [j["job_id"] for j in client.get("/projects/1/refresh").get_json()["jobs"]] == [job_id]
    page = client.get("/?project=1").get_data(as_text=True)
    assert "Prediction refresh" in page and job_id in page
    cancelled = client.post(f"/projects/1/refresh/{job_id}/cancel")
    assert cancelled.get_json()["status"] == "cancelled"
    assert client.post("/projects/9/refresh").status_code == 404  # no label config: nothing queued


def test_without_a_label_studio_to_write_into_the_job_skips(lab):
    env, studio, _ = lab
    env = {k: v for k, v in env.items() if k not in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")}
    result = refresh(env)
    assert "no Label Studio address or token" in result["skipped"] and studio.calls == []


def test_the_listed_tasks_count_as_no_votes_without_a_resync(lab):
    from backend.http.app import create_app
    from backend.votes.store import VoteStore
    env, studio, client = lab
    app = create_app(settings_for(env))
    before = app.test_client().get("/projects/1/consensus").get_json()["aesthetic"]["tasks"]["no_votes"]
    refresh(env)
    after = app.test_client().get("/projects/1/consensus").get_json()["aesthetic"]["tasks"]["no_votes"]
    # every listed task, labelled in Label Studio or not: no vote of it has reached the backend
    assert (before, after) == (0, len(studio.tasks))
    assert VoteStore(client).image_urls("1") == {t["id"]: t["data"]["image"] for t in studio.tasks}


def test_cli_queues_a_refresh_and_lists_its_jobs(lab, capsys):
    from backend.cli import main
    env, _, _ = lab
    with environment(env):
        assert main(["refresh", "1"]) == 0
        queued = json.loads(capsys.readouterr().out)
        assert main(["refresh-jobs", "1"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert main(["refresh", "9"]) == 1  # no label config: nothing queued, the reason on stderr
    assert "project 9" in capsys.readouterr().err
    assert listed["project"] == "1" and [j["job_id"] for j in listed["jobs"]] == [queued["job_id"]]
    assert listed["jobs"][0]["status"] == "queued"


def test_the_page_shows_a_job_that_ended_badly_by_its_status_not_its_first_progress():
    from backend.http.admin_page import refresh_status
    queued = {"state": "queued"}
    assert refresh_status({"status": "failed", "progress": queued}) == "failed"
    assert refresh_status({"status": "cancelled", "progress": {"state": "refreshing"}}) == "cancelled"
    assert refresh_status({"status": "finished", "progress": {"state": "finished", "skipped": "why"}}) == "skipped"
    assert refresh_status({"status": "started", "progress": {"state": "refreshing"}}) == "refreshing"
    assert refresh_status({"status": "queued", "progress": None}) == "queued"


def test_control_tasks_are_written_without_a_suggestion(lab):
    from backend.votes.control import is_control_task
    env, studio, _ = lab
    control = [t for t in (1, 3, 4, 6, 7) if is_control_task(t, 0.5)]
    assert control and len(control) < 5        # the unlabelled tasks hold both kinds at 50 %
    result = refresh({**env, "AESEMO_CONTROL_FRACTION": "0.5"})
    assert result["written"] == 5
    for task in (1, 3, 4, 6, 7):
        [written] = studio.predictions[task]
        assert written["model_version"] == result["version"] and 0 <= written["score"] <= 1
        assert len(written["result"]) == (0 if task in control else 2), (task, written)


def test_the_refresh_remembers_the_suggestion_each_task_is_prefilled_with(lab):
    from backend.votes.control import is_control_task
    from backend.votes.shown import shown_for
    env, studio, client = lab
    result = refresh({**env, "AESEMO_CONTROL_FRACTION": "0.5"})
    for task in (1, 3, 4, 6, 7):
        [written] = studio.predictions[task]
        shown = shown_for(client, "1", task)
        if is_control_task(task, 0.5):
            assert shown is None
        else:
            chosen = {r["from_name"]: r["value"]["choices"][0] for r in written["result"]}
            assert shown == {"version": result["version"], "how": "prefilled", **chosen}
    assert all(shown_for(client, "1", task) is None for task in (2, 5))     # labelled: not written


# ----- the suggestion as text in the task's data, where the label config shows it

SHIPPED_CONFIG = (resources.files("backend.labelstudio") / "aesthetic_emotion.xml").read_text()
UNLABELLED = (1, 3, 4, 6, 7)


@pytest.fixture
def shown_lab(lab):
    """The lab with the shipped config (it shows the text) and half the tasks control tasks."""
    env, studio, client = lab
    ProjectStore(client).remember_setup("1", SHIPPED_CONFIG, None, None)
    control = {t for t in UNLABELLED if is_control_task(t, 0.5)}
    assert 0 < len(control) < len(UNLABELLED)         # both kinds among them at 50 %
    return {**env, "AESEMO_CONTROL_FRACTION": "0.5"}, studio, client, control


def test_the_refresh_writes_each_suggestion_as_text_and_none_on_control_tasks(shown_lab):
    env, studio, client, control = shown_lab
    labels = parse_label_config(SHIPPED_CONFIG)
    version = refresh(env)["version"]
    for task in studio.tasks:
        data, t = task["data"], task["id"]
        assert data["image"].endswith(f"/img/{t}.png")
        if t in (2, 5):                                  # labelled: left as they are
            assert studio.predictions[t] == [{"model_version": "old"}] and "aesemo_suggestion" not in data
            continue
        [written] = studio.predictions[t]
        assert written["model_version"] == version and 0 <= written["score"] <= 1
        if t in control:
            assert written["result"] == [] and "aesemo_suggestion" not in data, (t, written, data)
            assert shown_for(client, "1", t) is None
        else:
            text = suggestion_text(labels, written)
            assert data["aesemo_suggestion"] == text and text.startswith(f"model {version} suggests: "), data
            assert shown_for(client, "1", t) == shown_as_text(labels, written)
            assert shown_for(client, "1", t)["how"] == "text"


def test_a_rerun_writes_no_data_and_mends_a_text_that_is_missing_or_does_not_belong(shown_lab):
    env, studio, client, control = shown_lab
    refresh(env)
    studio.calls.clear()
    assert refresh(env)["tasks"] == 0 and not any(c.startswith("PATCH") for c in studio.calls)

    by_id = {t["id"]: t for t in studio.tasks}
    suggested = next(t for t in UNLABELLED if t not in control)
    text = by_id[suggested]["data"].pop("aesemo_suggestion")        # lost (or a config that gained it since)
    by_id[min(control)]["data"]["aesemo_suggestion"] = "model v0001 suggests: low 51 %"
    again = refresh(env)
    assert (again["tasks"], again["written"]) == (2, 2)
    assert by_id[suggested]["data"]["aesemo_suggestion"] == text
    assert "aesemo_suggestion" not in by_id[min(control)]["data"]
    assert sorted(c for c in studio.calls if c.startswith("PATCH")) == sorted(
        f"PATCH /api/tasks/{t}" for t in (suggested, min(control)))


def test_a_config_that_shows_no_text_gets_no_task_data_written(lab):
    env, studio, _ = lab
    refresh(env)
    assert not any(c.startswith("PATCH") for c in studio.calls)
    assert all("aesemo_suggestion" not in t["data"] for t in studio.tasks)


def test_the_text_is_written_into_the_data_label_studio_holds_when_it_writes(shown_lab):
    env, studio, _, control = shown_lab
    suggested = next(t for t in studio.tasks if t["id"] in UNLABELLED and t["id"] not in control)
    studio.after_listing = lambda: suggested["data"].update(note="edited after the listing")
    refresh(env)
    assert suggested["data"]["note"] == "edited after the listing" and "aesemo_suggestion" in suggested["data"]
