"""Least-certain-first in Label Studio 1.23.2's Data Manager with the live backend.

With Label Studio's default flags a task's `predictions_score` averages only predictions whose
model_version is the project's, which for a live backend is the ML backend's title
(backend/labelstudio/data_manager.py). The backend titles its ML backend with the version it
serves and creates the "Least certain first" tab; Label Studio's own tasks API, through that
tab, then lists the least certain task first, also after the backend is connected again.
"""
from __future__ import annotations

import pytest

from backend.labelstudio.data_manager import SCORE_COLUMN, VIEW_TITLE
from backend_proc import LABEL_CONFIG, BackendProcess, backend_env, make_pngs
from ls_server import LabelStudioServer
from net import free_port, wait_for

# different colours, different outputs of the (untrained) model: different certainties
COLOURS = [(220, 30, 30), (30, 180, 60), (40, 60, 210), (240, 240, 240), (10, 10, 10)]


@pytest.fixture(scope="module")
def aesemo(label_studio: LabelStudioServer, image_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("aesemo-ordering")
    # checked again on every /setup after 1 s, so the reconnect below is seen at once
    env = backend_env(root / "data", label_studio.url, image_server.port, AESEMO_LS_RECHECK="1")
    backend = BackendProcess("ordering", root / "data", free_port(), env)
    backend.start()
    try:
        yield backend
    finally:
        print(backend.log_tail())
        backend.stop()


def tabs(ls: LabelStudioServer, pid: int) -> list[dict]:
    return [v for v in ls.views(pid)
            if v["data"].get("title") == VIEW_TITLE]


def sorts_by(ls: LabelStudioServer, pid: int, version: str) -> bool:
    """The project averages `version`'s scores, its backends carry it as title, and the tab exists."""
    backends = ls.ml_backends(pid)  # Label Studio sends /setup for each: the backend's trigger
    return (bool(backends) and all(b["title"] == version for b in backends)
            and ls.project(pid)["model_version"] == version and len(tabs(ls, pid)) == 1)


def tasks_in_tab(ls: LabelStudioServer, pid: int, view_id: int) -> list[dict]:
    return ls.tasks(pid, view=view_id, fields="all")


def test_least_certain_task_first_through_the_tab(label_studio: LabelStudioServer, aesemo: BackendProcess,
                                                  tmp_path):
    ls = label_studio
    pid = ls.create_project("aesemo e2e: least certain first", LABEL_CONFIG)["id"]
    assert ls.import_files(pid, make_pngs(tmp_path / "photos", COLOURS))["task_count"] == len(COLOURS)
    ml = ls.connect_ml_backend(pid, aesemo.url, title="aesemo")
    served = ls.ml_backend(ml["id"])["model_version"]
    assert served.startswith("base-resnet18-"), served
    wait_for(lambda: sorts_by(ls, pid, served), 60, interval=1, what=f"project {pid} sorting by {served}")

    ls.retrieve_predictions(pid)
    scores = {}
    for task in ls.tasks(pid):
        predictions = ls.predictions(task["id"])
        assert [p["model_version"] for p in predictions] == [served], predictions
        scores[task["id"]] = predictions[0]["score"]
    assert len(set(scores.values())) == len(scores), scores  # a real ordering to check

    [tab] = tabs(ls, pid)
    assert tab["data"]["ordering"] == [SCORE_COLUMN] and tab["data"]["filters"]["items"] == [], tab
    listed = tasks_in_tab(ls, pid, tab["id"])
    assert [t["id"] for t in listed] == sorted(scores, key=scores.get), (listed, scores)
    assert [t["predictions_score"] for t in listed] == pytest.approx(sorted(scores.values()))
    # the label stream through the tab (projects/api.py ProjectNextTaskAPI, Sequential sampling)
    least_certain = min(scores, key=scores.get)
    assert ls.api_json("GET", f"/api/projects/{pid}/next", params={"view": tab["id"]})["id"] == least_certain

    # connected again (Label Studio names the new backend "aesemo" and points the project at it):
    # titled anew once AESEMO_LS_RECHECK has passed, still one tab, and the same order
    ls.disconnect_ml_backend(ml["id"])
    ls.connect_ml_backend(pid, aesemo.url, title="aesemo")
    wait_for(lambda: sorts_by(ls, pid, served), 60, interval=1, what=f"project {pid} sorting by {served} again")
    assert len(tabs(ls, pid)) == 1
    assert [t["id"] for t in tasks_in_tab(ls, pid, tab["id"])] == sorted(scores, key=scores.get)
