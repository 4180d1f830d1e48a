"""What may become a project's current version, and the training request's checks that come
before any job: the promotion rule (backend/training/promotion.py), the refusal of versions that answer NaN
(backend/serving/registry.py, by a job or by hand), parameters refused before the label count, and a
running-job key left by a killed worker. No worker and no training: versions are written to disk.

Real pieces only: the session's redis-server (conftest) and the Flask app's test client.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import redis
from rq import Queue
from rq.job import JobStatus
from safetensors.torch import load_file, save_file

from backend.core import keys
from backend.core.settings import Settings
from backend.http.app import create_app
from backend.training.queue import submit_training
from backend.serving.registry import project_versions_dir
from model.version import META_FILE, WEIGHTS_FILE, sha256_file

from training_project import setup_project, write_small_version

PROJECT = 7


def metrics(aesthetic_f1: float, emotion_f1: float, confusion_a=None) -> dict:
    return {"metrics": {"aesthetic": {"accuracy": 0.5, "macro_f1": aesthetic_f1, "n": 6,
                                      "confusion": confusion_a or [[2, 1], [1, 2]]},
                        "emotion": {"accuracy": 0.5, "macro_f1": emotion_f1, "n": 2, "confusion": [[1, 0], [0, 1]]}}}


TRAINED = {"trained": True}
ONE_CLASS = [[0, 3], [0, 3]]  # every held-out image answered "low"


TRAINED_ON = {"training": {"train_size": 20}}


@pytest.mark.parametrize("parent, candidate, promoted, words", [
    ({}, metrics(0.3, 0.2), True, "first trained version (held-out macro-F1 0.2500 on its own 6 held-out tasks)"),
    # each version's score is on its own split: not compared, the inconclusive rule decides
    ({**TRAINED, **metrics(0.5, 0.5)}, metrics(0.6, 0.5), False, "scores from different splits are not compared"),
    ({**TRAINED, **metrics(0.5, 0.5)}, {**metrics(0.3, 0.3), **TRAINED_ON}, True, "trained on more labels (20 vs 0)"),
    ({**TRAINED, **metrics(0.5, 0.5)}, metrics(0.6, 0.5), False, "held-out macro-F1 0.5500 on its own 6 held-out tasks"),
    # broken metrics never win, nor does a version without a score
    ({**TRAINED, **metrics(0.0, 0.0)}, metrics(0.0, 0.0), False, "scores 0"),
    ({**TRAINED, **metrics(0.2, 0.2)}, {"metrics": {"aesthetic": {"macro_f1": 0.2, "confusion": ONE_CLASS},
                                                    "emotion": {"macro_f1": 0.2, "confusion": ONE_CLASS}}},
     False, "one class for every held-out image"),
    ({**TRAINED, **metrics(0.5, 0.5)}, metrics(math.nan, 0.5), False, "no valid held-out macro-F1"),
    ({**TRAINED, **metrics(0.5, 0.5)}, {"metrics": {}}, False, "no valid held-out macro-F1"),
    ({}, metrics(math.nan, math.nan), False, "no valid held-out macro-F1"),
])
def test_promotion_without_stable_held_out_tasks(parent, candidate, promoted, words):
    from backend.training.promotion import by_metric
    decision, why = by_metric(Settings(), parent, candidate)
    assert decision is promoted and words in why, why
    assert "vs current" not in why  # no comparison of scores from different splits


def rewrite_weights(folder, change) -> None:
    """Change the version's weights, keeping model.json's hash in step (so only the values are wrong)."""
    state = load_file(folder / WEIGHTS_FILE)
    change(state)
    save_file(state, str(folder / WEIGHTS_FILE))
    meta = json.loads((folder / META_FILE).read_text())
    meta["weights_sha256"] = sha256_file(folder / WEIGHTS_FILE)
    (folder / META_FILE).write_text(json.dumps(meta))


def head_layers(state, branch: str) -> list[str]:
    """The weight names of a branch's head layers in order (fc1..fc3, or the one linear fc)."""
    return sorted(k for k in state if k.startswith(f"{branch}.head.") and k.endswith(".weight"))


def nan_weights(state) -> None:
    state[head_layers(state, "branch_e")[-1]][0, 0] = math.nan


def overflowing_weights(state) -> None:
    # finite, but each output of the head's first layer sums the pooled features times 1e38:
    # infinity, then NaN
    state[head_layers(state, "branch_a")[0]].fill_(1e38)


@pytest.fixture
def versions(settings):
    folder = project_versions_dir(settings, str(PROJECT))
    write_small_version(folder / "v0001-good", seed=1, **metrics(0.5, 0.5))
    for name, change in (("v0002-nan", nan_weights), ("v0003-overflow", overflowing_weights)):
        write_small_version(folder / name, seed=2, **metrics(0.9, 0.9))
        rewrite_weights(folder / name, change)
    return folder


@pytest.mark.parametrize("name, words", [("v0002-nan", "NaN or infinite values"),
                                         ("v0003-overflow", "outputs are not finite")])
def test_a_version_that_answers_nan_is_never_promoted_by_a_job(settings, versions, name, words):
    from backend.training.promotion import promotion
    for rule in ("metric", "always"):
        promoted, why = promotion(replace(settings, promotion=rule), {"trained": True, **metrics(0.1, 0.1)},
                                   metrics(0.9, 0.9), versions / name)
        assert promoted is False and words in why, why
    decision, why = promotion(settings, {}, metrics(0.5, 0.5), versions / "v0001-good")
    assert decision is True and why.startswith("first trained version (")


@pytest.mark.parametrize("name, words", [("v0002-nan", "NaN or infinite values"),
                                         ("v0003-overflow", "outputs are not finite")])
def test_promote_by_hand_refuses_a_version_that_answers_nan(settings, redis_client, versions, name, words):
    client = create_app(settings).test_client()
    assert client.post(f"/projects/{PROJECT}/versions/v0001-good/promote").status_code == 200
    answer = client.post(f"/projects/{PROJECT}/versions/{name}/promote")
    assert answer.status_code == 409, answer.get_json()
    assert name in answer.get_json()["error"] and words in answer.get_json()["error"]
    # the version and its file, never where the server keeps them
    assert str(settings.data_dir) not in answer.get_json()["error"], answer.get_json()
    assert redis_client.get(keys.current_version(PROJECT)) == "v0001-good"


# ----- training parameters are checked first ------------------------------------------------------

@pytest.mark.parametrize("raw, words", [
    ('{"lr": Infinity}', ["lr", "(0, 1]"]),
    ('{"lr": NaN}', ["lr", "(0, 1]"]),
    ('{"lr": -Infinity}', ["lr", "(0, 1]"]),
    ('{"lr": 1e308}', ["lr", "(0, 1]"]),
    ('{"lr": 1e400}', ["lr", "(0, 1]"]),
    ('{"lr": 1' + "0" * 400 + '}', ["lr", "(0, 1]"]),
    ('{"epochs": 1' + "0" * 400 + '}', ["epochs", "1..1000"]),
    ('{"epochs": 1e400}', ["epochs", "1..1000"]),
    ('{"epochs": 1' + "0" * 5000 + '}', ["number too long", "4300 digits"]),
    ('{"epochs": 1001}', ["epochs", "1..1000"]),
    ('{"batch_size": 0}', ["batch_size", "1..1024"]),
    ('{"batch_size": 1025}', ["batch_size", "1..1024"]),
    ('{"backbone": 5}', ["backbone", "resnet18"]),
])
def test_bad_parameters_are_400_even_without_enough_labels(settings, redis_client, raw, words):
    client = create_app(settings).test_client()
    setup_project(client, PROJECT)  # known, but without a single label: 409 once the parameters pass
    answer = client.post(f"/projects/{PROJECT}/train", data=raw, content_type="application/json")
    assert answer.status_code == 400, answer.get_json()
    error = answer.get_json()["error"]
    assert all(word in error for word in words) and len(error) < 200, error
    good = client.post(f"/projects/{PROJECT}/train", json={"lr": 0.01, "epochs": 1000})
    assert good.status_code == 409, good.get_json()


# ----- "run after <job>" only when that job runs ----------------------------------------------------

def started_job(settings, raw: redis.Redis, worker: str) -> str:
    job = Queue("elsewhere", connection=raw).enqueue_call("os.getpid")
    job.set_status(JobStatus.STARTED)
    job.worker_name = worker
    job.save()
    return job.id


@pytest.mark.parametrize("case", ["no such job", "failed", "worker gone"])
def test_a_stale_running_key_is_cleared_not_announced(settings, redis_client, case):
    raw = redis.Redis.from_url(settings.redis_url)
    if case == "no such job":
        stale = "train-7-20260101000000-dead00"
    else:
        stale = started_job(settings, raw, "ghost-worker")
        if case == "failed":
            Queue("elsewhere", connection=raw).fetch_job(stale).set_status(JobStatus.FAILED)
    raw.set(keys.running_job("7"), stale)
    answer = submit_training(settings, "7", "test")
    assert answer["message"] == f"queued job {answer['job_id']}", answer
    assert raw.get(keys.running_job("7")) is None


def test_a_running_job_with_a_live_worker_is_announced(settings, redis_client):
    raw = redis.Redis.from_url(settings.redis_url)
    running = started_job(settings, raw, "live-worker")
    raw.set("rq:worker:live-worker", "1", ex=60)
    raw.set(keys.running_job("7"), running)
    answer = submit_training(settings, "7", "test")
    assert answer["message"] == f"queued job {answer['job_id']} to run after {running}"
    assert raw.get(keys.running_job("7")) == running.encode()
