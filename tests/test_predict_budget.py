"""/predict's time budget (AESEMO_PREDICT_BUDGET) and its fetches per request.

Real pieces only: the session's embedded Redis, an image server and an image host that accepts
connections and never answers, both on 127.0.0.1. Nothing here asserts a duration: the budget
decides *which* tasks are answered, and the order in which requests finish shows starvation.
"""
from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from backend.http.app import create_app
from backend.serving.predict import FETCH_THREADS
from backend.core.settings import Settings, load_settings

from backend.serving import prediction_store
from backend.serving.refresh_queue import refresh_jobs
from hanging_server import HangingServer
from training_project import environment, predict_body
from net import wait_for

PROJECT = 5


@pytest.fixture
def hanging():
    with HangingServer("127.0.0.1") as server:
        yield server


@pytest.fixture(scope="module")
def base_app(tmp_path_factory, redis_url, images):
    # "127.0.0.1" without a port: the image server and every hanging server are allowed
    settings = replace(Settings(), data_dir=Path(tmp_path_factory.mktemp("budget")) / "data", redis_url=redis_url,
                       backbone="resnet18", allowed_image_hosts=("127.0.0.1",), suggest_untrained=True,
                       suggestion_gate=False, control_fraction=0.0,
                       inference_path="pytorch")  # tests/test_runtime.py runs the budget on the runtime path
    redis.Redis.from_url(redis_url).flushdb()  # no other module's current versions for project 5
    app = create_app(settings)
    warm = post(app.test_client(), predict_body(PROJECT, [images.url("/img/1.png")]))
    assert warm.status_code == 200, warm.get_data(as_text=True)  # the model is loaded from here on
    return app


def app_with(base_app, **changes):
    """An app on changed settings sharing base_app's loaded models."""
    backend = base_app.extensions["aesemo"]
    app = create_app(replace(backend.settings, **changes))
    # one cache for both: the hot swap loads a project's model through it, and a fresh load
    # would spend the budget these tests give the images
    served = app.extensions["aesemo"]
    served.models = served.swap.models = backend.models
    return app


def post(client, body):
    return client.post("/predict", data=json.dumps(body), content_type="application/json")


def test_budget_answers_what_finished(base_app, images, hanging, redis_client):
    # chunks of 2: [good, hanging], [good, good]. The first chunk waits for its hanging image until
    # the budget is spent, predicts the image it has, and the second chunk is never started.
    # a Label Studio to write into (never called here): the refresh of the tasks left out is queued
    app = app_with(base_app, predict_budget_s=8.0, image_timeout_s=30.0, predict_chunk_size=2,
                   label_studio_url="http://127.0.0.1:9", label_studio_api_key="token-never-sent")
    images.reset()
    urls = [images.url("/img/2.png"), hanging.url("/hang.png"), images.url("/img/3.png"), images.url("/img/4.png")]
    response = post(app.test_client(), predict_body(PROJECT, urls))
    assert response.status_code == 200, response.get_data(as_text=True)
    reply = response.get_json()
    results = reply["results"]
    assert results[0] and results[0]["result"]
    assert results[1:] == [[], [], []]
    assert [(e["index"], e["task"], e["kind"]) for e in reply["errors"]] == \
        [(1, 2, "budget"), (2, 3, "budget"), (3, 4, "budget")]
    assert all("AESEMO_PREDICT_BUDGET" in e["error"] for e in reply["errors"])
    assert images.paths() == ["/img/2.png"]  # nothing fetched after the budget was spent
    assert hanging.accepted == 1
    # the tasks left out are queued for one refresh job, whose predictions the next /predict finds
    [refresh] = refresh_jobs(app.extensions["aesemo"].settings, str(PROJECT))
    assert refresh["status"] == "queued" and refresh["task_ids"] == 3


def test_a_task_predicted_once_is_answered_from_the_store(base_app, images, redis_client):
    app = app_with(base_app)
    urls = [images.url("/img/7.png"), images.url("/img/8.png")]
    first = post(app.test_client(), predict_body(PROJECT, urls)).get_json()
    version = first["model_version"]
    # marked in the store: an answer carrying the mark came from there, not from the model
    entries = prediction_store.stored_predictions(redis_client, str(PROJECT), version, {1: urls[0], 2: urls[1]})
    marked = {task: (urls[task - 1], {**p, "score": 0.125}) for task, p in entries.items()}
    prediction_store.store_predictions(redis_client, str(PROJECT), version, marked, 60)
    again = post(app.test_client(), predict_body(PROJECT, urls)).get_json()
    assert [r["score"] for r in again["results"]] == [0.125, 0.125]
    # a task whose image changed is predicted afresh
    changed = post(app.test_client(), predict_body(PROJECT, [urls[1], urls[0]])).get_json()
    assert changed["results"] == first["results"][::-1]


def test_nothing_finished_in_budget_is_422(base_app, hanging, redis_client):
    app = app_with(base_app, predict_budget_s=1.0, image_timeout_s=20.0)
    response = post(app.test_client(), predict_body(PROJECT, [hanging.url(f"/{i}.png") for i in range(3)]))
    assert response.status_code == 422, response.get_data(as_text=True)
    reply = response.get_json()
    assert "no task could be predicted" in reply["error"]
    assert {e["kind"] for e in reply["errors"]} == {"budget"}


def test_nothing_finished_but_queued_is_200_with_empty_results(base_app, hanging, redis_client):
    """With a Label Studio to write into, the tasks the budget left out are queued for the
    refresh job: Label Studio gets [] for them now, not an error state."""
    app = app_with(base_app, predict_budget_s=1.0, image_timeout_s=20.0,
                   label_studio_url="http://127.0.0.1:9", label_studio_api_key="token-never-sent")
    project = PROJECT + 1
    response = post(app.test_client(), predict_body(project, [hanging.url(f"/q{i}.png") for i in range(3)]))
    assert response.status_code == 200, response.get_data(as_text=True)
    reply = response.get_json()
    assert reply["results"] == [[], [], []]
    assert reply["queued"] == 3
    assert {e["kind"] for e in reply["errors"]} == {"budget"}
    [refresh] = refresh_jobs(app.extensions["aesemo"].settings, str(project))
    assert refresh["status"] == "queued" and refresh["task_ids"] == 3


def test_hanging_images_do_not_starve_another_request(base_app, images, hanging, redis_client):
    """Request A's images hang (more of them than one request fetches at once); request B, one
    good image, sent while all of A's fetches are stuck, is answered while A is still waiting."""
    app = app_with(base_app, predict_budget_s=600.0, image_timeout_s=30.0)
    slow_body = predict_body(PROJECT, [hanging.url(f"/{i}.png") for i in range(2 * FETCH_THREADS)])
    slow: dict = {}
    thread = threading.Thread(target=lambda: slow.setdefault("response", post(app.test_client(), slow_body)),
                              daemon=True)
    thread.start()
    try:
        wait_for(lambda: hanging.holding() >= FETCH_THREADS, 60, what="request A's fetches to hang")
        quick = post(app.test_client(), predict_body(PROJECT, [images.url("/img/6.png")]))
        a_still_waiting = thread.is_alive()
    finally:
        hanging.release()  # A's fetches fail at once from here on
        thread.join(60)
    assert quick.status_code == 200, quick.get_data(as_text=True)
    assert quick.get_json()["results"][0]["result"]
    assert a_still_waiting, "request B was answered only after request A"
    assert slow["response"].status_code == 422  # A: every image refused by the released host
    assert {e["kind"] for e in slow["response"].get_json()["errors"]} == {"connection"}


def test_budget_setting():
    with environment({"AESEMO_PREDICT_BUDGET": "12.5"}):
        assert load_settings().predict_budget_s == 12.5
    with environment({}):
        assert load_settings().predict_budget_s == 60.0
    for bad in ("0", "-3", "soon"):
        with environment({"AESEMO_PREDICT_BUDGET": bad}), pytest.raises(ValueError, match="AESEMO_PREDICT_BUDGET"):
            load_settings()
