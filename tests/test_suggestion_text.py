"""The model's suggestion as a line of text beside the choices (backend/serving/suggestion_text.py):
its format, where the label config shows it, and `/predict` queueing a refresh for the tasks
whose data does not show it. The refresh writing it into Label Studio is tested in
tests/test_refresh.py, the labelling screen in tests/e2e/test_suggestion_text_in_browser.py."""
from __future__ import annotations

from dataclasses import replace
from importlib import resources

import pytest

from backend.core import keys
from backend.labelstudio.label_config import SUGGESTION_FIELD, parse_label_config, prediction_result
from backend.serving.refresh_queue import refresh_jobs
from backend.serving.suggestion_text import data_with_text, shown_as_text, suggestion_text, text_is_current
from backend.votes.control import is_control_task

from training_project import example, predict_body, setup_project

SHIPPED_CONFIG = (resources.files("backend.labelstudio") / "aesthetic_emotion.xml").read_text()
EMOTION = ["amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"]


@pytest.fixture(scope="module")
def labels():
    return parse_label_config(SHIPPED_CONFIG)


def prediction(labels, aesthetic_high: float, emotion: dict[str, float], version: str = "v0003") -> dict:
    rest = (1 - sum(emotion.values())) / (len(EMOTION) - len(emotion))
    return prediction_result(labels, [aesthetic_high, 1 - aesthetic_high], [emotion.get(n, rest) for n in EMOTION],
                             version)


def test_the_shipped_config_shows_the_text_and_a_config_without_it_does_not(labels):
    assert labels.suggestion_key == SUGGESTION_FIELD == "aesemo_suggestion"
    assert parse_label_config(example("predict.json")["label_config"]).suggestion_key is None


def test_the_text_names_the_model_version_and_each_class_with_its_rounded_percentage(labels):
    assert suggestion_text(labels, prediction(labels, 0.62, {"awe": 0.31})) == "model v0003 suggests: high 62 %, awe 31 %"
    # whole percents, halves up; the top class of each head
    assert suggestion_text(labels, prediction(labels, 0.375, {"fear": 0.625})) == \
        "model v0003 suggests: low 63 %, fear 63 %"
    assert suggestion_text(labels, prediction(labels, 0.9951, {"sadness": 0.40})) == \
        "model v0003 suggests: high 100 %, sadness 40 %"


def test_only_the_task_types_the_prediction_holds_are_named(labels):
    full = prediction(labels, 0.62, {"awe": 0.31})
    emotion_only = {**full, "result": [r for r in full["result"] if r["from_name"] == "emotion"]}
    assert suggestion_text(labels, emotion_only) == "model v0003 suggests: awe 31 %"
    assert shown_as_text(labels, emotion_only) == {"version": "v0003", "how": "text", "aesthetic": None,
                                                   "emotion": "awe"}
    nothing = {**full, "result": []}          # a control task's, or every type withheld
    assert suggestion_text(labels, nothing) is None and shown_as_text(labels, nothing) is None
    assert suggestion_text(labels, []) is None          # a task that failed: no prediction at all


def test_a_score_that_is_no_probability_leaves_the_class_without_a_percentage(labels):
    full = prediction(labels, 0.62, {"awe": 0.31})
    full["result"][0]["score"] = float("nan")
    assert suggestion_text(labels, full) == "model v0003 suggests: high, awe 31 %"


def test_the_data_shows_the_text_under_its_key_and_nothing_else_changes(labels):
    data = {"image": "http://x/a.png", "note": 1}
    shown = data_with_text(labels, data, "model v1 suggests: high 62 %")
    assert shown == {**data, "aesemo_suggestion": "model v1 suggests: high 62 %"}
    assert data_with_text(labels, shown, None) == data
    assert text_is_current(labels, {"data": shown}, "model v1 suggests: high 62 %")
    assert not text_is_current(labels, {"data": data}, "model v1 suggests: high 62 %")
    assert not text_is_current(labels, {"data": shown}, None)
    assert text_is_current(labels, {"data": data}, None)


# ----- /predict

PROJECT = 8
IDS = list(range(1, 9))
CONTROL = {t for t in IDS if is_control_task(t, 0.5)}


@pytest.fixture
def backend(settings, images, redis_client):
    """A test client of a backend that can write into a Label Studio (none listens: /predict sends
    it nothing, the refresh job it queues is what would write), half the tasks control tasks, the
    project connected, and the refresh job its connection queued out of the way."""
    from backend.http.app import create_app
    settings = replace(settings, allowed_image_hosts=(images.netloc,), label_studio_url="http://127.0.0.1:9",
                       label_studio_api_key="test-token-0123456789", control_fraction=0.5)
    client = create_app(settings).test_client()
    setup_project(client, PROJECT)
    forget_refresh_jobs(redis_client)
    return settings, client


def forget_refresh_jobs(redis_client) -> None:
    redis_client.delete(keys.refresh_pending(str(PROJECT)), keys.refresh_jobs(str(PROJECT)))


def predict(client, images, data_extra: dict | None = None) -> dict:
    body = predict_body(PROJECT, [images.url(f"/img/{n}.png") for n in IDS], SHIPPED_CONFIG)
    for task, ident in zip(body["tasks"], IDS):
        task["id"] = ident
        task["data"].update((data_extra or {}).get(ident, {}))
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200, answer.get_json()
    return dict(zip(IDS, answer.get_json()["results"]))


@pytest.mark.torch
def test_predict_queues_a_refresh_for_the_tasks_whose_data_does_not_show_their_text(backend, images,
                                                                                     redis_client, labels):
    settings, client = backend
    assert 0 < len(CONTROL) < len(IDS)       # both kinds among them at 50 %
    first = predict(client, images)
    [job] = refresh_jobs(settings, str(PROJECT))
    assert job["reasons"] == ["tasks without their suggestion text"] and job["task_ids"] == len(IDS) - len(CONTROL)

    forget_refresh_jobs(redis_client)
    shown = {t: {SUGGESTION_FIELD: suggestion_text(labels, r)} for t, r in first.items() if t not in CONTROL}
    assert predict(client, images, shown) == first
    assert refresh_jobs(settings, str(PROJECT)) == []     # every task shows its text: nothing to write

    predict(client, images, {**shown, min(CONTROL): {SUGGESTION_FIELD: "model v0001 suggests: low 51 %"}})
    [job] = refresh_jobs(settings, str(PROJECT))          # a control task showing a text: it must go
    assert job["task_ids"] == 1
