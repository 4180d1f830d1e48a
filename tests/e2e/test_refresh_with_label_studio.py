"""The prediction refresh against a real Label Studio 1.23.2: connecting the backend queues a
refresh, `aesemo worker --burst` writes the predictions through Label Studio's API (labelled tasks
keep theirs), and a 2,000-task "Retrieve predictions" completes inside Label Studio's default
predict timeout (ML_TIMEOUT_PREDICT, 100 s), the tasks /predict had no time for queued."""
from __future__ import annotations

import pytest

from backend_proc import LABEL_CONFIG, BackendProcess, backend_env, run_worker
from net import free_port, wait_for

pytestmark = pytest.mark.torch

LABELLED = {"value": {"choices": ["high"]}, "from_name": "aesthetic", "to_name": "image", "type": "choices"}


@pytest.fixture(scope="module")
def lab(label_studio, image_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("aesemo-refresh")
    env = backend_env(root / "data", label_studio.url, image_server.port, LABEL_STUDIO_API_KEY=label_studio.token)
    backend = BackendProcess("refresh", root / "data", free_port(), env)
    backend.start()
    try:
        yield backend, root
    finally:
        backend.stop()


def test_connecting_refreshes_the_unlabelled_tasks_through_label_studio(label_studio, image_server, lab):
    backend, root = lab
    ls = label_studio
    project = ls.create_project("refresh", LABEL_CONFIG)["id"]
    ls.import_tasks(project, [{"image": image_server.url(f"/img/{n}.png")} for n in range(6)])
    tasks = sorted(t["id"] for t in ls.tasks(project))
    labelled = tasks[0]
    ls.create_annotation(labelled, [LABELLED])
    ls.connect_ml_backend(project, backend.url)  # /setup, the first time: a refresh is queued
    jobs = wait_for(lambda: backend.get(f"/projects/{project}/refresh").json()["jobs"], 30, what="a refresh job")
    assert jobs[0]["status"] == "queued" and jobs[0]["reasons"] == ["project connected"]
    run_worker(backend, root)
    [job] = backend.get(f"/projects/{project}/refresh").json()["jobs"]
    assert job["status"] == "finished", job
    version = job["progress"]["version"]
    assert (job["progress"]["tasks"], job["progress"]["written"]) == (5, 5), job
    for task in tasks[1:]:
        assert [p["model_version"] for p in ls.predictions(task)] == [version]
    assert ls.predictions(labelled) == []
    # a second run asks Label Studio what each task holds: every one already has this version's
    backend.post(f"/projects/{project}/refresh")
    run_worker(backend, root)
    again = backend.get(f"/projects/{project}/refresh").json()["jobs"][0]
    assert again["status"] == "finished" and (again["progress"]["tasks"], again["progress"]["written"]) == (0, 0), again
    # another version's prediction in one task (as after a promotion since): that task is written again
    ls.api_json("POST", f"/api/projects/{project}/import/predictions",
                json=[{"task": tasks[1], "model_version": "v0002-other", "result": [], "score": 0.5}])
    ls.api_json("POST", "/api/dm/actions", params={"id": "delete_tasks_predictions", "project": project},
                json={"selectedItems": {"all": False, "included": [tasks[2]]}})
    backend.post(f"/projects/{project}/refresh")
    run_worker(backend, root)
    third = backend.get(f"/projects/{project}/refresh").json()["jobs"][0]
    assert (third["progress"]["tasks"], third["progress"]["written"]) == (2, 2), third
    assert [p["model_version"] for p in ls.predictions(tasks[1])] == [version]


def test_retrieve_predictions_of_2000_tasks_completes_and_queues_the_rest(label_studio, image_server, lab):
    backend, _ = lab
    ls = label_studio
    project = ls.create_project("retrieve 2000", LABEL_CONFIG)["id"]
    for start in range(0, 2000, 500):
        ls.import_tasks(project, [{"image": image_server.url(f"/img/{n}.png")} for n in range(start, start + 500)])
    ls.connect_ml_backend(project, backend.url)
    ls.request_timeout = 300  # the action waits for /predict; Label Studio's own limit is the 100 s under test
    answer = ls.retrieve_predictions(project)
    assert answer["processed_items"] == 2000, answer
    stored = sum(1 for t in ls.tasks(project, page_size=1000) if t.get("total_predictions"))
    jobs = backend.get(f"/projects/{project}/refresh").json()["jobs"]
    # /predict answered inside its budget: what it computed is stored in Label Studio, the rest queued
    assert stored > 0, answer
    assert stored == 2000 or any(j["task_ids"] == "all" or j["task_ids"] >= 2000 - stored for j in jobs), (stored, jobs)
