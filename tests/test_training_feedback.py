"""Start Training's feedback through Flask's test client and the session's real redis-server:
Label Studio gets a queued job's id (`job`, which it records) and a refusal as a 200 (an error
status would put the backend into its error state), every refusal is listed among the
project's jobs as "refused"; cancelled jobs say so; the list's order; rolling back to the base
version (guarded, confirmed); tasks Label Studio names count as `no_votes` before any label."""
from __future__ import annotations

import copy
import json

import pytest
import redis

from backend.core import keys
from backend.serving.registry import project_versions_dir, register_base, set_current_version
from backend.training.queue import REFUSALS_KEPT, in_display_order, record_refusal, training_queue

from net import wait_for
from training_project import (environment, example, flip_a_byte, label_tasks, legacy_train_body, predict_body,
                              service_client, setup_project, start_training_body, write_small_version)

LS_HOST = "http://127.0.0.1:9"
FEW, MANY = 4, 5  # projects with fewer consensus labels than AESEMO_MIN_TRAINING_LABELS (5), and enough
TRAINED = "v0001-20261101000000"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, redis_url):
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    raw.flushdb()
    env, settings, client = service_client(tmp_path_factory.mktemp("feedback") / "data", redis_url, "127.0.0.1")
    for project in (FEW, MANY):
        setup_project(client, project, hostname=LS_HOST)
    label_tasks(client, MANY, {t: f"{LS_HOST}/img/{t}.png" for t in range(1, 6)})
    yield {"client": client, "settings": settings, "raw": raw, "env": env}
    client.application.extensions["aesemo"].close()
    training_queue(settings).empty()
    raw.flushdb()


def jobs_of(lab, project: int) -> list[dict]:
    response = lab["client"].get(f"/projects/{project}/jobs")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["jobs"]


def test_refused_start_training_is_a_200_without_job_and_is_listed_as_refused(lab):
    lab["raw"].delete(keys.refused_requests(str(FEW)))
    client = lab["client"]
    answer = client.post("/webhook", json=start_training_body(FEW))
    assert answer.status_code == 200, answer.get_json()
    assert "job" not in answer.get_json()
    assert answer.get_json()["training"]["refused"] is True

    legacy = client.post("/train", json=legacy_train_body(FEW))
    assert legacy.status_code == 200, legacy.get_json()
    assert "job" not in legacy.get_json() and legacy.get_json()["refused"] is True

    assert client.post(f"/projects/{FEW}/train").status_code == 409  # the admin's API still says 409

    jobs = jobs_of(lab, FEW)
    assert [j["status"] for j in jobs] == ["refused"] * 3
    assert [j["requested_by"] for j in jobs] == ["admin", "legacy /train", "START_TRAINING"]  # newest first
    for job in jobs:
        assert "0 consensus-labelled tasks" in job["reason"] and job["refused_at"].endswith("Z")


def test_refusals_kept_are_bounded(lab):
    for _ in range(REFUSALS_KEPT + 3):
        lab["client"].post("/webhook", json=start_training_body(FEW))
    assert lab["raw"].llen(keys.refused_requests(str(FEW))) == REFUSALS_KEPT
    assert len(jobs_of(lab, FEW)) == REFUSALS_KEPT


def test_the_command_line_lists_refusals_too(lab, capsys):
    from backend.cli import main
    with environment(lab["env"]):
        assert main(["jobs", str(FEW)]) == 0
    listed = json.loads(capsys.readouterr().out)["jobs"]
    assert listed and {j["status"] for j in listed} == {"refused"}


def test_a_queued_job_is_answered_with_its_id_as_job(lab):
    client = lab["client"]
    answer = client.post("/webhook", json=start_training_body(MANY)).get_json()
    assert answer["job"] == answer["training"]["job_id"] and answer["job"].startswith(f"train-{MANY}-")
    legacy = client.post("/train", json=legacy_train_body(MANY))
    assert legacy.status_code == 202 and legacy.get_json()["job"] == answer["job"]  # merged into the pending job


def test_cancelled_job_shows_cancelled_and_queued_comes_before_ended(lab):
    client = lab["client"]
    first = client.post(f"/projects/{MANY}/train").get_json()["job_id"]
    cancelled = client.post(f"/projects/{MANY}/jobs/{first}/cancel").get_json()
    assert cancelled["status"] == "cancelled"
    record_refusal(lab["settings"], str(MANY), "admin", "a refusal between the two jobs")
    queued = client.post(f"/projects/{MANY}/train").get_json()["job_id"]

    statuses = [(j["job_id"], j["status"]) for j in jobs_of(lab, MANY)]
    assert statuses[0] == (queued, "queued"), statuses
    assert (first, "cancelled") in statuses and "refused" in dict(statuses).values()
    client.post(f"/projects/{MANY}/jobs/{queued}/cancel")


def test_display_order_running_then_queued_then_ended_newest_first():
    jobs = [{"job_id": "a", "status": "finished", "enqueued_at": "2026-01-01T00:00:00Z", "ended_at": "2026-01-01T01:00:00Z"},
            {"job_id": "b", "status": "queued", "enqueued_at": "2026-01-01T00:00:01Z"},
            {"job_id": "c", "status": "refused", "enqueued_at": "2026-01-01T02:00:00Z", "ended_at": "2026-01-01T02:00:00Z"},
            {"job_id": "d", "status": "started", "enqueued_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:30:00Z"},
            {"job_id": "e", "status": "queued", "enqueued_at": "2026-01-01T00:00:02Z"},
            {"job_id": "f", "status": "cancelled", "enqueued_at": "2026-01-01T00:00:03Z"}]
    assert [j["job_id"] for j in in_display_order(jobs)] == ["d", "e", "b", "c", "a", "f"]


def test_tasks_created_makes_unlabelled_tasks_count_as_no_votes(lab):
    body = copy.deepcopy(example("webhook_TASKS_CREATED.json"))
    body["project"]["id"] = FEW
    for n, task in enumerate(body["tasks"]):
        task.update(id=700 + n, project=FEW)
    answer = lab["client"].post("/webhook", json=body)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["tasks_noted"] == len(body["tasks"])
    summary = lab["client"].get(f"/projects/{FEW}/consensus").get_json()
    assert summary["aesthetic"]["tasks"]["no_votes"] == len(body["tasks"])
    # a known task keeps its URL; noting it again adds nothing
    assert lab["client"].post("/webhook", json=body).get_json()["tasks_noted"] == 0


def test_rollback_needs_confirm(lab, capsys):
    response = lab["client"].post(f"/projects/{MANY}/rollback", json={})
    assert response.status_code == 400 and '"confirm"' in response.get_json()["error"]
    assert lab["client"].post(f"/projects/{MANY}/rollback", json={"confirm": "yes"}).status_code == 400
    assert lab["client"].post(f"/projects/{MANY}/rollback").status_code == 400  # no body at all
    from backend.cli import main
    with environment(lab["env"]):
        assert main(["rollback", str(MANY)]) != 0
    assert "--yes" in capsys.readouterr().err


# ----- predictions and rollbacks load versions ---------------------------------------------------

def test_predict_notes_its_task_ids_for_the_consensus(lab):
    client = lab["client"]
    before = client.get(f"/projects/{MANY}/consensus").get_json()["aesthetic"]["tasks"]["no_votes"]
    body = predict_body(MANY, [f"{LS_HOST}/img/a.png", f"{LS_HOST}/img/b.png"])
    for n, task in enumerate(body["tasks"]):
        task["id"] = 900 + n
    client.post("/predict", json=body)  # the images cannot be fetched: the ids count all the same
    after = client.get(f"/projects/{MANY}/consensus").get_json()["aesthetic"]["tasks"]["no_votes"]
    assert after == before + 2


def test_rollback_to_the_untrained_base_then_to_a_registered_base(lab):
    client, settings, raw = lab["client"], lab["settings"], lab["raw"]
    write_small_version(project_versions_dir(settings, str(MANY)) / TRAINED, seed=1)
    set_current_version(raw, str(MANY), TRAINED)
    page = client.get(f"/?project={MANY}").get_data(as_text=True)
    assert 'id="roll-back"' in page and "data-confirm=" in page

    swap = client.application.extensions["aesemo"].swap
    client.post("/predict", json=predict_body(MANY, [f"{LS_HOST}/img/a.png"]))  # this process serves MANY now
    wait_for(lambda: swap.get(str(MANY)).version == TRAINED, 60, what="the trained version served")

    answer = client.post(f"/projects/{MANY}/rollback", json={"confirm": True})
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["previous"] == TRAINED and answer.get_json()["current"].startswith("base-resnet18-")
    assert raw.get(keys.current_version(str(MANY))) is None
    # the notice names the base's folder: the serving process swaps to it
    wait_for(lambda: swap.get(str(MANY)).version == answer.get_json()["current"], 60, what="the base served")
    assert client.get(f"/projects/{MANY}/versions").get_json()["current"] == answer.get_json()["current"]
    assert 'id="roll-back"' not in client.get(f"/?project={MANY}").get_data(as_text=True)  # nothing to roll back

    # a rollback whose notice was lost: the poller finds the pointer empty and serves the base
    set_current_version(raw, str(MANY), TRAINED)
    wait_for(lambda: swap.get(str(MANY)).version == TRAINED, 60, what="the trained version served again")
    raw.delete(keys.current_version(str(MANY)))
    wait_for(lambda: swap.get(str(MANY)).version == answer.get_json()["current"], 60, what="the poller's base")

    base_folder = settings.data_dir / "registered" / "trained-base"
    write_small_version(base_folder, seed=2)
    register_base(raw, base_folder)
    try:
        set_current_version(raw, str(MANY), TRAINED)
        answer = client.post(f"/projects/{MANY}/rollback", json={"confirm": True})
        assert answer.status_code == 200 and answer.get_json()["current"] == "registered-trained-base"
        # the same guard as a promotion: a base whose weights fail their hash is refused
        set_current_version(raw, str(MANY), TRAINED)
        flip_a_byte(next(base_folder.glob("*.safetensors")))
        refused = client.post(f"/projects/{MANY}/rollback", json={"confirm": True})
        assert refused.status_code == 409, refused.get_json()
        assert raw.get(keys.current_version(str(MANY))) == TRAINED
    finally:
        register_base(raw, None)
