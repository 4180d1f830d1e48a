"""The real aesemo backend (``aesemo serve``, gunicorn) against a real Label Studio 1.23.2.

The backend runs as a subprocess with its own data directory and embedded Redis, exactly as an
operator would start it. Label Studio reaches it on 127.0.0.1, sends /health, /setup, /predict
and /webhook, and the backend downloads the uploaded images back from Label Studio with the
legacy token that /setup carried.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from backend.core import keys
from backend_proc import (  # shared with test_consensus_with_label_studio.py
    AESTHETIC,
    EMOTION,
    LABEL_CONFIG,
    BackendProcess,
    backend_env,
    make_pngs,
)
from images_server import ImageServer
from ls_server import LabelStudioError, LabelStudioServer
from net import free_port, wait_for

BASIC_AUTH = ("ls-robot", "c0rrect-horse-battery")

COLOURS = [(220, 30, 30), (30, 180, 60), (40, 60, 210)]


def check_prediction(pred: dict, expected_version: str) -> None:
    """One stored prediction: both choices, valid classes, score = min of the region scores."""
    result = pred["result"]
    assert [r["from_name"] for r in result] == ["aesthetic", "emotion"], result
    for r in result:
        assert r["to_name"] == "image" and r["type"] == "choices", r
        assert len(r["value"]["choices"]) == 1, r
        assert isinstance(r["score"], (int, float)) and 0.0 <= r["score"] <= 1.0, r
    assert result[0]["value"]["choices"][0] in AESTHETIC, result[0]
    assert result[1]["value"]["choices"][0] in EMOTION, result[1]
    assert isinstance(pred["score"], (int, float)), pred
    assert pred["score"] == pytest.approx(min(r["score"] for r in result)), pred
    assert pred["model_version"] == expected_version, pred


def ls_log_since(ls: LabelStudioServer, offset: int) -> str:
    try:
        with open(ls.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def ls_log_size(ls: LabelStudioServer) -> int:
    try:
        return ls.log_path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def start_backend(label_studio: LabelStudioServer, image_server: ImageServer, tmp_path_factory, request):
    """Factory: ``start_backend(name, basic_auth=None, **env)`` starts one ``aesemo serve``
    (resnet18, its own data dir and embedded Redis, LABEL_STUDIO_URL = this Label Studio, the
    image server's host allowed) and stops every one it started at teardown. On a failed test
    the backends' log tails are printed."""
    started: list[BackendProcess] = []

    def start(name: str, basic_auth: tuple[str, str] | None = None, **extra_env: str) -> BackendProcess:
        root = tmp_path_factory.mktemp(f"aesemo-{name}")
        env = backend_env(root / "data", label_studio.url, image_server.port, basic_auth, **extra_env)
        backend = BackendProcess(name, root / "data", free_port(), env, basic_auth)
        started.append(backend)
        backend.start()
        print(f"\naesemo backend {name!r} healthy on {backend.url} after {backend.started_in_s:.1f} s")
        return backend

    yield start
    for backend in started:
        t0 = time.monotonic()
        backend.stop()
        print(f"\naesemo backend {backend.name!r} stopped in {time.monotonic() - t0:.1f} s")


@pytest.fixture(scope="module")
def aesemo(start_backend) -> BackendProcess:
    return start_backend("plain")


@pytest.fixture(scope="module")
def aesemo_basic(start_backend) -> BackendProcess:
    return start_backend("basic", basic_auth=BASIC_AUTH)


@pytest.fixture(autouse=True)
def _logs_on_failure(request, label_studio: LabelStudioServer):
    """Print the backends' and Label Studio's log tails when a test fails (pytest shows a failed
    test's captured teardown output)."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        for name in ("aesemo", "aesemo_basic"):
            if name in request.fixturenames:
                print(request.getfixturevalue(name).log_tail())
        print(label_studio.log_tail())


# ---------------------------------------------------------------------------------- tests


def _project_with_uploads(ls: LabelStudioServer, tmp_path: Path, title: str) -> tuple[int, list[dict]]:
    pid = ls.create_project(title, LABEL_CONFIG)["id"]
    reply = ls.import_files(pid, make_pngs(tmp_path / "photos", COLOURS))
    assert reply["task_count"] == 3, reply
    tasks = ls.tasks(pid)
    assert len(tasks) == 3
    for t in tasks:
        assert t["data"]["image"].startswith(f"/data/upload/{pid}/"), t["data"]
    return pid, tasks


def _predict_and_check(ls: LabelStudioServer, pid: int, ml_id: int, task_ids: list[int]) -> str:
    t0 = time.monotonic()
    reply = ls.retrieve_predictions(pid, task_ids)
    elapsed = time.monotonic() - t0
    print(f"retrieve_predictions of {len(task_ids)} tasks: {elapsed:.2f} s -> {reply}")
    version = ls.ml_backend(ml_id)["model_version"]
    assert version and version.startswith("base-resnet18-"), version
    for tid in task_ids:
        preds = ls.predictions(tid)
        assert len(preds) == 1, (tid, preds, ls.log_tail(20))
        check_prediction(preds[0], version)
    return version


def test_predictions_stored_for_uploaded_images(label_studio: LabelStudioServer, aesemo: BackendProcess, tmp_path):
    ls = label_studio
    pid, tasks = _project_with_uploads(ls, tmp_path, "aesemo e2e: predictions")
    ids = [t["id"] for t in tasks]

    ml = ls.connect_ml_backend(pid, aesemo.url, title="aesemo")
    assert ml["state"] == "CO", ml
    assert [w["url"] for w in ls.webhooks(pid)] == [aesemo.url + "/webhook"]

    backend_log = len(aesemo.log_text())
    version = _predict_and_check(ls, pid, ml["id"], ids)
    # the backend took the images from Label Studio (/data/upload needs the /setup token)
    downloads = list((aesemo.data_dir / "cache" / "downloads").rglob("*"))
    assert len([p for p in downloads if p.is_file()]) >= 3, downloads
    assert "no prediction for" not in aesemo.log_text()[backend_log:], aesemo.log_tail()

    # a second pass asks for nothing new: still exactly one prediction per task
    ls.retrieve_predictions(pid, ids)
    for tid in ids:
        assert [p["model_version"] for p in ls.predictions(tid)] == [version]
    # what the annotator sees when opening a task
    task = ls.task(ids[0])
    assert len(task["predictions"]) == 1, task


def test_basic_auth_backend(label_studio: LabelStudioServer, aesemo_basic: BackendProcess, tmp_path):
    ls = label_studio
    # the backend itself refuses requests without the credentials
    assert aesemo_basic.get("/health", auth=None).status_code == 401
    pid, tasks = _project_with_uploads(ls, tmp_path, "aesemo e2e: basic auth")
    ids = [t["id"] for t in tasks]

    with pytest.raises(LabelStudioError) as err:
        ls.connect_ml_backend(pid, aesemo_basic.url, basic_auth=(BASIC_AUTH[0], "wrong-password"))
    assert err.value.status == 400, err.value
    with pytest.raises(LabelStudioError) as err:
        ls.connect_ml_backend(pid, aesemo_basic.url)  # no credentials at all
    assert err.value.status == 400, err.value
    assert ls.ml_backends(pid) == []

    ml = ls.connect_ml_backend(pid, aesemo_basic.url, title="aesemo-basic", basic_auth=BASIC_AUTH)
    assert ml["auth_method"] == "BASIC_AUTH" and ml["basic_auth_user"] == BASIC_AUTH[0], ml
    assert ml["state"] == "CO", ml
    _predict_and_check(ls, pid, ml["id"], ids)


def test_unreadable_image_gets_no_prediction(label_studio: LabelStudioServer, aesemo: BackendProcess,
                                             image_server: ImageServer, tmp_path):
    ls = label_studio
    pid = ls.create_project("aesemo e2e: one bad image", LABEL_CONFIG)["id"]
    ls.import_files(pid, make_pngs(tmp_path / "photos", COLOURS[:1]))
    good_url = image_server.add_png(f"good-{uuid.uuid4().hex[:6]}", (250, 200, 20))
    bad_url = image_server.url(f"/img/missing-{uuid.uuid4().hex[:6]}.png")  # not in its files: 404
    ls.import_tasks(pid, [{"image": good_url}, {"image": bad_url}])
    tasks = ls.tasks(pid)
    assert len(tasks) == 3
    bad = [t["id"] for t in tasks if t["data"]["image"] == bad_url]
    good = [t["id"] for t in tasks if t["data"]["image"] != bad_url]
    assert len(bad) == 1 and len(good) == 2

    ml = ls.connect_ml_backend(pid, aesemo.url, title="aesemo")
    offset = ls_log_size(ls)
    backend_log = len(aesemo.log_text())
    reply = ls.retrieve_predictions(pid, [t["id"] for t in tasks])  # one /predict with all 3 tasks
    assert reply is not None
    log = ls_log_since(ls, offset)

    version = ls.ml_backend(ml["id"])["model_version"]
    for tid in good:
        preds = ls.predictions(tid)
        assert len(preds) == 1, (tid, preds, log)
        check_prediction(preds[0], version)
    assert ls.predictions(bad[0]) == [], log
    # Label Studio took the reply, [] item included, without an error of its own
    assert "ERROR" not in log and "Traceback" not in log, log
    assert urlsplit(bad_url).path in image_server.paths(), image_server.paths()
    assert "no prediction for" in aesemo.log_text()[backend_log:], aesemo.log_tail()
    # The reply shape Label Studio was given: the same body sent straight to the backend answers
    # with a prediction for each good task and an empty list for the bad one, by position.
    body = {"tasks": tasks, "project": str(pid), "label_config": LABEL_CONFIG}
    direct = requests.post(aesemo.url + "/predict", json=body, timeout=60)
    assert direct.status_code == 200, direct.text
    reply = direct.json()
    assert len(reply["results"]) == 3, reply
    for t, item in zip(tasks, reply["results"]):
        if t["id"] == bad[0]:
            assert item == [], item
        else:
            check_prediction(item, version)
    assert [e["task"] for e in reply["errors"]] == bad and reply["errors"][0]["kind"] == "not_found", reply
    # the user can still open the bad task (LS asks again for it alone, the backend answers 422)
    task = ls.task(bad[0])
    assert task["predictions"] == [], task


def test_annotation_webhook_recorded(label_studio: LabelStudioServer, aesemo: BackendProcess, tmp_path):
    ls = label_studio
    project = ls.create_project("aesemo e2e: webhooks", LABEL_CONFIG)
    pid = project["id"]
    ls.import_files(pid, make_pngs(tmp_path / "photos", COLOURS[:1]))
    task_id = ls.tasks(pid)[0]["id"]
    ls.connect_ml_backend(pid, aesemo.url, title="aesemo")

    result = [
        {"from_name": "aesthetic", "to_name": "image", "type": "choices", "value": {"choices": ["high"]}},
        {"from_name": "emotion", "to_name": "image", "type": "choices", "value": {"choices": ["awe"]}},
    ]
    annotation = ls.create_annotation(task_id, result, lead_time=1.5)

    def recorded():
        for _entry_id, fields in client.xrange(keys.EVENTS):
            event = json.loads(fields["event"])
            if event["action"] == "ANNOTATION_CREATED" and event.get("annotation", {}).get("id") == annotation["id"]:
                return fields["event"], event
        return None

    client = aesemo.redis()
    try:
        raw, event = wait_for(recorded, 10, interval=0.2, what="the annotation event")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{aesemo.log_tail()}") from None
    finally:
        client.close()
    assert event["project"] == str(pid)
    assert event["task"]["id"] == task_id
    assert event["annotation"]["result"] == annotation["result"]
    assert event["annotation"]["completed_by"] == ls.whoami()["id"]
    # the project object (and with it the project token) is not recorded
    assert '"token"' not in raw, raw
    token = ls.project(pid).get("token")
    if token:
        assert token not in raw, raw


def test_refused_start_training_is_listed_and_leaves_the_backend_ready(label_studio: LabelStudioServer,
                                                                      aesemo: BackendProcess, tmp_path):
    """Label Studio's Start Training on a project with no labels: the backend refuses with a 200
    (Label Studio's error state would stop its predictions) and lists the refusal."""
    ls = label_studio
    pid, _tasks = _project_with_uploads(ls, tmp_path, "aesemo e2e: refused training")
    ml = ls.connect_ml_backend(pid, aesemo.url, title="aesemo")
    ls.start_training(ml["id"])  # answered once the backend has answered

    jobs = wait_for(lambda: aesemo.get(f"/projects/{pid}/jobs").json()["jobs"], 30, interval=0.2,
                    what="the refusal in the backend's jobs list")
    assert [(j["status"], j["requested_by"]) for j in jobs] == [("refused", "START_TRAINING")], jobs
    assert "consensus-labelled tasks" in jobs[0]["reason"] and jobs[0]["refused_at"], jobs
    state = ls.ml_backend(ml["id"])
    assert state["state"] != "ER" and not state.get("error_message"), state
    assert ls.ml_backends(pid)[0]["state"] != "ER"
