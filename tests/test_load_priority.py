"""Predictions wait while a version loads (backend/serving/load_priority.py): the load gets the
CPU, and a prediction that started during it answers from the new version; the wait is bounded."""
from __future__ import annotations

import json
import threading
from dataclasses import replace

from backend.http.app import create_app
from backend.serving.load_priority import LoadPriority
from backend.serving.models import ModelCache
from backend.serving.registry import project_versions_dir, set_current_version

from net import wait_for
from training_project import predict_body, setup_project, write_small_version

PROJECT = 5
OLD, NEW = "v0001-old", "v0002-new"


def test_a_prediction_starting_during_a_load_waits_and_answers_from_the_new_version(settings, redis_client, images,
                                                                                   monkeypatch):
    versions = project_versions_dir(settings, str(PROJECT))
    write_small_version(versions / OLD, seed=1)
    write_small_version(versions / NEW, seed=2)
    app = create_app(replace(settings, allowed_image_hosts=("127.0.0.1",)))
    setup_project(app.test_client(), PROJECT)
    set_current_version(redis_client, str(PROJECT), OLD)
    body = json.dumps(predict_body(PROJECT, [images.url("/img/1.png")]))

    def predict() -> dict:
        answer = app.test_client().post("/predict", data=body, content_type="application/json")
        assert answer.status_code == 200, answer.get_data(as_text=True)
        return answer.get_json()
    assert predict()["model_version"] == OLD
    backend = app.extensions["aesemo"]
    backend.swap.priority.max_wait_s = 300  # the test, not the bound, decides when the load ends

    started, release, loaded = threading.Event(), threading.Event(), ModelCache._load

    def slow_load(cache, version):
        if version.name == NEW:
            started.set()
            release.wait(300)
        return loaded(cache, version)
    monkeypatch.setattr(ModelCache, "_load", slow_load)
    swap = threading.Thread(target=backend.swap.swap_to, args=(str(PROJECT), NEW))  # as on a notice
    swap.start()
    assert started.wait(300)
    answers = []
    during = threading.Thread(target=lambda: answers.append(predict()))
    during.start()
    wait_for(lambda: backend.swap.priority.waiting == 1, 60, interval=0.05, what="the prediction to wait for the load")
    release.set()
    swap.join(300)
    during.join(300)
    assert [answer["model_version"] for answer in answers] == [NEW]


def test_the_wait_is_bounded_when_a_load_takes_too_long():
    priority = LoadPriority(max_wait_s=0.05)
    with priority.loading():
        assert priority.wait_for_loads() is False  # ran out: the request goes on with the old model
        assert priority.waiting == 0
    assert priority.wait_for_loads() is True
