"""The whole loop, end to end, against a real Label Studio 1.23.2: pre-annotate with the base model,
three annotators label every task (overlap 3), consensus, Label Studio's own "Start Training"
(START_TRAINING webhook), a training job run by a real ``aesemo worker --burst``, promotion of the
new version, the serving process swapping to it without a restart, and Label Studio storing
predictions of the new version next to the base ones.

The images are generated (model.synthetic): brightness shows the aesthetic class and hue the
emotion class, so "the true labels" are known. The annotators mostly give them, with designed
disagreements on a few tasks (2-vs-1 splits, which still agree, and one three-way emotion split,
which stays disputed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from backend_proc import (
    AESTHETIC,
    EMOTION,
    LABEL_CONFIG,
    BackendProcess,
    aesemo_executable,
    backend_env,
)
from images_server import ImageServer
from annotating import Annotator, states, wait_until
from ls_server import LabelStudioServer
from net import free_port

N_TASKS = 12
WORKER_TIMEOUT_S = 900  # a 2-core machine under heavy load: torch import, resync, 1 epoch, evaluation
TRAIN_ENV = {
    "AESEMO_BACKBONE": "resnet18",
    "AESEMO_MIN_TRAINING_LABELS": "5",
    "AESEMO_TRAIN_EPOCHS": "1",
    "AESEMO_TRAIN_IMAGE_SIZE": "40",
    "AESEMO_TRAIN_CROP_SIZE": "35",
    "AESEMO_TRAIN_LR": "0.02",
    "AESEMO_TRAIN_DEVICE": "cpu",
    "AESEMO_SWAP_POLL": "1",
    "AESEMO_JOB_HEARTBEAT": "2",
    "OMP_NUM_THREADS": "1",  # several OpenMP threads per process slow torch down on 2 busy cores
}


# ---------------------------------------------------------------------------------- helpers



def backend_json(backend: BackendProcess, path: str, timeout: float = 30) -> dict:
    r = backend.get(path, timeout=timeout)
    assert r.status_code == 200, f"GET {path} -> {r.status_code}: {r.text}"
    return r.json()


def predictions_by_task(ls: LabelStudioServer, task_ids: list[int]) -> dict[int, list[dict]]:
    return {t: ls.predictions(t) for t in task_ids}


def check_prediction(pred: dict, version: str) -> None:
    assert pred["model_version"] == version, pred
    assert [r["from_name"] for r in pred["result"]] == ["aesthetic", "emotion"], pred
    assert pred["result"][0]["value"]["choices"][0] in AESTHETIC, pred
    assert pred["result"][1]["value"]["choices"][0] in EMOTION, pred
    assert isinstance(pred["score"], (int, float)), pred


def retrieve_until_stored(ls: LabelStudioServer, pid: int, task_ids: list[int], version: str,
                          attempts: int = 3) -> tuple[dict[int, list[dict]], int, float]:
    """Label Studio's "Retrieve Predictions" on the tasks still lacking a prediction of ``version``.
    Label Studio says "Retrieved N" even when the backend timed out (its /health waits 1 s), so a
    task without one is asked for again, as a user would click again: at most ``attempts`` times."""
    t0 = time.monotonic()
    clicks = 0
    while True:
        stored = predictions_by_task(ls, task_ids)
        missing = [t for t, preds in stored.items() if not any(p["model_version"] == version for p in preds)]
        if not missing or clicks == attempts:
            return stored, clicks, time.monotonic() - t0
        reply = ls.retrieve_predictions(pid, missing)
        clicks += 1
        assert reply["processed_items"] == len(missing), reply


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture
def stopped_at_end():
    """Collects (name, stop) pairs; every one is stopped after the test, whatever happened."""
    stoppers: list = []
    yield stoppers.append
    for stop in reversed(stoppers):
        stop()


# ---------------------------------------------------------------------------------- the test


def test_full_loop(label_studio: LabelStudioServer, image_server: ImageServer, tmp_path_factory, stopped_at_end):
    from backend.core.redis_connection import embedded_socket_path
    from model.synthetic import write_synthetic_set

    ls = label_studio
    timings: dict[str, float] = {}
    t_test = time.monotonic()

    def lap(name: str, since: float) -> float:
        timings[name] = time.monotonic() - since
        return time.monotonic()

    # ---- the backend: its own data dir and embedded Redis; it reads Label Studio's export
    root = tmp_path_factory.mktemp("aesemo-full-loop")
    data_dir = root / "data"
    env = backend_env(data_dir, ls.url, image_server.port, LABEL_STUDIO_API_KEY=ls.token, **TRAIN_ENV)
    backend = BackendProcess("full-loop", data_dir, free_port(), env)
    worker_log = root / "worker.log"
    stopped_at_end(backend.stop)
    t = time.monotonic()
    try:
        backend.start()
        t = lap("backend start", t)

        # ---- generated images with visible labels, served over http on 127.0.0.1
        manifest = write_synthetic_set(root / "images", N_TASKS, seed=7, size=64)
        lines = [json.loads(line) for line in manifest.read_text().splitlines()]
        tag = uuid.uuid4().hex[:6]
        truth_by_url: dict[str, tuple[str, str]] = {}
        for row in lines[1:]:
            path = f"/img/{tag}-{row['image']}"
            image_server.files[path] = (manifest.parent / row["image"]).read_bytes()
            truth_by_url[image_server.url(path)] = (row["aesthetic"], row["emotion"])

        # ---- the project: overlap 3 on every task, three annotators
        pid = ls.create_project("aesemo e2e: full loop", LABEL_CONFIG)["id"]
        ls.import_tasks(pid, [{"image": u} for u in truth_by_url])
        project = ls.update_project(pid, maximum_annotations=3, overlap_cohort_percentage=100)
        assert project["maximum_annotations"] == 3 and project["overlap_cohort_percentage"] == 100, project
        tasks = sorted(ls.tasks(pid), key=lambda x: x["id"])
        assert [x["overlap"] for x in tasks] == [3] * N_TASKS, [x["overlap"] for x in tasks]
        task_ids = [x["id"] for x in tasks]
        truth = {x["id"]: truth_by_url[x["data"]["image"]] for x in tasks}
        assert len(set(truth.values())) == N_TASKS  # 2 aesthetic x 6 emotion classes, each once
        a, b, c = (Annotator(ls, name) for name in ("full-a", "full-b", "full-c"))
        assert len({a.id, b.id, c.id, ls.whoami()["id"]}) == 4
        t = lap("project + 3 signups", t)

        # ---- connect the backend; it answers /setup with the base version
        ml = ls.connect_ml_backend(pid, backend.url, title="aesemo")
        ml_id = ml["id"]
        assert ml["state"] == "CO", ml
        base_version = ml["model_version"]
        assert base_version.startswith("base-resnet18-"), ml  # base-resnet18-random without ImageNet weights
        assert [w["url"] for w in ls.webhooks(pid)] == [backend.url + "/webhook"]
        t = lap("connect ML backend", t)

        # ---- Retrieve Predictions: every task gets one prediction of the base version
        preds, attempts, _ = retrieve_until_stored(ls, pid, task_ids, base_version)
        for task_id, got in preds.items():
            assert len(got) == 1, (task_id, got)
            check_prediction(got[0], base_version)
        timings["first retrieve (clicks)"] = attempts
        t = lap("retrieve predictions (base)", t)

        # ---- the three annotators label every task: the true labels, but for designed disagreements
        others_a = {x: next(o for o in AESTHETIC if o != x) for x in AESTHETIC}

        def other_emotion(e: str, k: int = 1) -> str:
            return EMOTION[(EMOTION.index(e) + k) % len(EMOTION)]

        votes = {tid: dict.fromkeys("abc", truth[tid]) for tid in task_ids}
        t1, t4, t7, t10 = task_ids[1], task_ids[4], task_ids[7], task_ids[10]
        votes[t1]["c"] = (others_a[truth[t1][0]], truth[t1][1])        # aesthetic 2-vs-1: agreed
        votes[t4]["b"] = (truth[t4][0], other_emotion(truth[t4][1]))   # emotion 2-vs-1: agreed
        votes[t7]["a"] = (truth[t7][0], other_emotion(truth[t7][1], 1))  # emotion three ways: disputed
        votes[t7]["b"] = (truth[t7][0], other_emotion(truth[t7][1], 2))
        votes[t10]["a"] = (others_a[truth[t10][0]], truth[t10][1])     # both dimensions 2-vs-1: agreed
        votes[t10]["c"] = (truth[t10][0], other_emotion(truth[t10][1], 3))
        people = {"a": a, "b": b, "c": c}
        for who in "abc":  # one annotator after another, as in a labeling stream
            for tid in task_ids:
                people[who].annotate(tid, *votes[tid][who])
        t = lap("36 annotations", t)

        # ---- consensus in the backend (fed by the annotation webhooks)
        expected = {"aesthetic": states(agreed=N_TASKS), "emotion": states(agreed=N_TASKS - 1, disputed=1)}
        summary = wait_until(lambda: backend_json(backend, f"/projects/{pid}/consensus"),
                             lambda s: {d: s[d]["tasks"] for d in expected} == expected, timeout=120)
        assert {d: summary[d]["tasks"] for d in expected} == expected, summary
        agreed = backend_json(backend, f"/projects/{pid}/consensus/tasks?state=agreed")["tasks"]
        assert sorted(x["task"] for x in agreed) == task_ids, agreed
        for x in agreed:  # the majority is the truth wherever a dimension is agreed
            assert x["aesthetic"]["label"] == truth[x["task"]][0], x
            if x["task"] != t7:
                assert x["emotion"]["label"] == truth[x["task"]][1], x
        disputed = backend_json(backend, f"/projects/{pid}/consensus/tasks?state=disputed")["tasks"]
        assert [x["task"] for x in disputed] == [t7], disputed
        t = lap("consensus", t)

        # ---- Label Studio's own Start Training: POST /api/ml/<id>/train -> START_TRAINING webhook
        ls.start_training(ml_id)
        jobs = wait_until(lambda: backend_json(backend, f"/projects/{pid}/jobs")["jobs"],
                          lambda js: len(js) >= 1, timeout=60)
        assert len(jobs) == 1, jobs
        job = jobs[0]
        assert job["status"] == "queued" and job["project"] == str(pid), job
        assert job["requests"] == 1 and job["params"] == {}, job
        t = lap("start training -> job queued", t)

        # ---- a training worker on the same data dir and Redis runs it, then exits (burst)
        worker_env = dict(env, REDIS_URL=f"unix://{embedded_socket_path(data_dir)}")
        with open(worker_log, "wb") as out:
            worker = subprocess.Popen([aesemo_executable(), "worker", "--burst"], cwd=root, env=worker_env,
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)

        def stop_worker():
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait(timeout=10)

        stopped_at_end(stop_worker)
        try:
            code = worker.wait(timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        worker_text = worker_log.read_text(errors="replace")
        assert code == 0, f"aesemo worker --burst: exit {code}\n{worker_text[-6000:]}"
        t_worker_done = time.monotonic()
        t = lap("worker (burst)", t)

        job = backend_json(backend, f"/projects/{pid}/jobs/{job['job_id']}")
        assert job["status"] == "finished", json.dumps(job, indent=1) + "\n" + worker_text[-6000:]
        outcome = job["result"]
        new_version = outcome["version"]
        assert new_version.startswith("v0001-"), outcome
        assert outcome["promoted"] is True and outcome["parent"] == base_version, outcome
        assert outcome["snapshot"]["rows"] == N_TASKS, outcome
        assert outcome["images"]["used"] == N_TASKS and outcome["images"]["failed"] == 0, outcome
        assert outcome["resync"] and "error" not in outcome["resync"], outcome  # resynced from LS's export
        assert outcome["resync"]["problems"] == [], outcome
        assert job["progress"]["state"] == "finished", job
        versions = backend_json(backend, f"/projects/{pid}/versions")
        assert versions["current"] == new_version, versions
        assert [v["version"] for v in versions["versions"]] == [new_version], versions
        assert versions["versions"][0]["current"] is True and versions["versions"][0]["parent"] == base_version

        # ---- the serving process: /setup answers the new version (through Label Studio), and it
        # swaps the model in memory (listener or poller), without a restart
        ml_now = wait_until(lambda: ls.ml_backend(ml_id),
                            lambda m: m["model_version"] == new_version, timeout=30, interval=1.0)
        assert ml_now["model_version"] == new_version, ml_now
        assert ml_now["state"] == "CO", ml_now
        timings["promotion -> LS sees new version"] = time.monotonic() - t_worker_done
        swapped = f"project {pid} now serves model version {new_version}"
        wait_until(backend.log_text, lambda text: swapped in text, timeout=120)
        assert swapped in backend.log_text(), backend.log_tail()
        timings["promotion -> backend swapped"] = time.monotonic() - t_worker_done
        t = time.monotonic()

        # ---- Retrieve Predictions again: every task gets one of the new version, keeping the base one
        preds, attempts, _ = retrieve_until_stored(ls, pid, task_ids, new_version)
        right = 0
        for task_id, got in preds.items():
            assert sorted(p["model_version"] for p in got) == sorted([base_version, new_version]), (task_id, got)
            new = next(p for p in got if p["model_version"] == new_version)
            check_prediction(new, new_version)
            right += [r["value"]["choices"][0] for r in new["result"]] == list(truth[task_id])
        timings["second retrieve (clicks)"] = attempts
        lap("retrieve predictions (new)", t)
        counts = ls.api_json("GET", f"/api/projects/{pid}/model-versions")
        assert counts.get(base_version) == N_TASKS and counts.get(new_version) == N_TASKS, counts
        timings["test total"] = time.monotonic() - t_test

        print(f"\nfull loop: base {base_version} -> {new_version}; "
              f"metrics {outcome['metrics']}; training {outcome['training_seconds']} s on {outcome['device']}; "
              f"new version fully right on {right}/{N_TASKS} tasks (1 epoch)")
        for name, value in timings.items():
            print(f"  {name:36s} {value:8.1f}" + ("" if "clicks" in name else " s"))
    except BaseException:
        print(backend.log_tail(80))
        if worker_log.exists():
            print("--- worker.log (tail) ---\n" + "\n".join(worker_log.read_text(errors="replace").splitlines()[-60:]))
        print(ls.log_tail(40))
        raise
