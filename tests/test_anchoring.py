"""What suggestions do to votes: each vote records what its annotator was shown (from the webhook
and from the resync's export), how long they took and whether they kept the suggestion.

Bodies are the recorded Label Studio 1.23.2 webhook with ids, authors, choices, parent_prediction
and lead_time changed; Redis is the session's real one (conftest)."""
from __future__ import annotations

import json

import pytest
from ls_examples import example

from backend.core import keys
from backend.http.app import create_app
from backend.labelstudio.label_config import parse_label_config
from backend.votes.project_consensus import ProjectConsensus
from backend.votes.resync import apply_export
from backend.votes.shown import remember_shown, shown_for

PROJECT = "1"    # the recorded bodies' project id
AESTHETIC = ("high", "low")
CLASSES = {"aesthetic": AESTHETIC,
           "emotion": ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")}


def image_url(task: int) -> str:
    return f"http://127.0.0.1:8099/images/img{task}.png"


def annotation_event(ann: int, task: int, user: int, aesthetic: str, emotion: str | None = None,
                     parent_prediction: int | None = None, lead_time: float | None = 10.0) -> dict:
    body = example("webhook_ANNOTATION_CREATED.json")
    template = body["annotation"]["result"]
    result = [{**template[0], "value": {"choices": [aesthetic]}}]
    if emotion is not None:
        result.append({**template[1], "value": {"choices": [emotion]}})
    body["annotation"].update(id=ann, task=task, completed_by=user, result=result, parent_prediction=parent_prediction,
                              lead_time=lead_time, updated_at="2026-11-27T12:00:00Z")
    body["task"].update(id=task, data={"image": image_url(task)})
    return body


def suggestion(aesthetic: str | None, emotion: str | None = None, how: str = "prefilled") -> dict:
    return {"version": "v0001-20261101000000", "aesthetic": aesthetic, "emotion": emotion, "how": how}


def send(client, body) -> None:
    response = client.post("/webhook", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)


def stored(db, annotation: int, project: str = PROJECT) -> dict:
    return json.loads(db.hget(keys.votes(project), annotation))


@pytest.fixture
def labels():
    return parse_label_config(example("webhook_ANNOTATION_CREATED.json")["project"]["label_config"])


# ----- what a vote records, from the webhook ----------------------------------------------------------

def test_a_webhook_vote_records_the_prefilled_suggestion_whether_it_kept_it_and_its_time(settings, redis_client):
    client = create_app(settings).test_client()
    remember_shown(redis_client, PROJECT, 7, suggestion("high", "awe"))
    send(client, annotation_event(1, 7, 2, "high", "fear", parent_prediction=70, lead_time=1.5))
    record = stored(redis_client, 1)
    assert record["parent_prediction"] == 70 and record["lead_time"] == 1.5
    assert record["shown"] == suggestion("high", "awe")
    assert record["equal"] == {"aesthetic": True, "emotion": False}


def test_what_a_webhook_vote_was_shown_follows_label_studios_prefill(settings, redis_client):
    client = create_app(settings).test_client()
    # text beside the image: shown whether or not Label Studio pre-filled anything
    remember_shown(redis_client, PROJECT, 1, suggestion("low", how="text"))
    send(client, annotation_event(1, 1, 2, "low"))
    assert stored(redis_client, 1)["shown"] == suggestion("low", how="text")
    assert stored(redis_client, 1)["equal"] == {"aesthetic": True}
    # a pre-fill the annotation does not name (the project hides predictions): nothing shown
    remember_shown(redis_client, PROJECT, 2, suggestion("low"))
    send(client, annotation_event(2, 2, 2, "low"))
    assert stored(redis_client, 2)["shown"] is None and stored(redis_client, 2)["equal"] == {}
    # pre-filled from a prediction the backend did not remember: shown, its classes unknown
    send(client, annotation_event(3, 3, 2, "low", parent_prediction=30, lead_time=None))
    record = stored(redis_client, 3)
    assert record["shown"] == {"version": None, "aesthetic": None, "emotion": None, "how": "prefilled"}
    assert record["equal"] == {} and record["lead_time"] is None
    # nothing remembered, nothing pre-filled
    send(client, annotation_event(4, 4, 2, "low"))
    assert stored(redis_client, 4)["shown"] is None and stored(redis_client, 4)["parent_prediction"] is None


@pytest.mark.parametrize("field, value", [
    ("lead_time", -1), ("lead_time", "4.2"), ("lead_time", True), ("lead_time", 10 ** 8), ("lead_time", [1]),
    ("parent_prediction", "1"), ("parent_prediction", 0), ("parent_prediction", 2 ** 63), ("parent_prediction", 1.5),
])
def test_a_bad_lead_time_or_parent_prediction_is_400_naming_the_field(settings, redis_client, field, value):
    client = create_app(settings).test_client()
    body = annotation_event(1, 1, 2, "high")
    body["annotation"][field] = value
    response = client.post("/webhook", json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert field in response.get_json()["error"]
    assert redis_client.hlen(keys.votes(PROJECT)) == 0


def test_a_stored_record_that_is_no_suggestion_reads_as_none(redis_client, caplog):
    redis_client.hset(keys.shown_suggestions(PROJECT), 5, json.dumps({"how": "shouted", "aesthetic": "high"}))
    redis_client.hset(keys.shown_suggestions(PROJECT), 6, "not json")
    assert shown_for(redis_client, PROJECT, 5) is None and shown_for(redis_client, PROJECT, 6) is None
    assert "stored suggestion ignored" in caplog.text
    with pytest.raises(ValueError, match="how"):
        remember_shown(redis_client, PROJECT, 5, {"aesthetic": "high"})
    remember_shown(redis_client, PROJECT, 5, None)
    assert redis_client.hget(keys.shown_suggestions(PROJECT), 5) is None


# ----- what a vote records, from the resync's export --------------------------------------------------

def exported_task(task: int, annotations: list[dict], predictions: list | None = None) -> dict:
    """A task as Label Studio's JSON export lists it: its data, annotations and predictions."""
    return {"id": task, "data": {"image": image_url(task)}, "annotations": annotations,
            "predictions": predictions if predictions is not None else []}


def exported_annotation(ann: int, task: int, user: int, aesthetic: str, parent_prediction=None, lead_time=10.0) -> dict:
    annotation = annotation_event(ann, task, user, aesthetic, parent_prediction=parent_prediction,
                                  lead_time=lead_time)["annotation"]
    return {**annotation, "completed_by": {"id": user, "email": f"user{user}@example.com"}}


def prediction(prediction_id: int, aesthetic: str) -> dict:
    template = example("webhook_ANNOTATION_CREATED.json")["annotation"]["result"][0]
    return {"id": prediction_id, "model_version": "v0002-20261102000000", "score": 0.7,
            "result": [{**template, "value": {"choices": [aesthetic]}}]}


def test_the_resync_records_what_each_vote_was_shown_and_its_time(settings, redis_client, labels):
    consensus = ProjectConsensus(redis_client, settings)
    client = create_app(settings).test_client()
    # vote 1 arrived by webhook while task 1 showed "low" as text; the task shows "high" now
    remember_shown(redis_client, PROJECT, 1, suggestion("low", how="text"))
    send(client, annotation_event(1, 1, 2, "low", lead_time=2.0))
    remember_shown(redis_client, PROJECT, 1, suggestion("high", how="text"))
    remember_shown(redis_client, PROJECT, 2, suggestion("low", how="text"))
    remember_shown(redis_client, PROJECT, 3, suggestion("low"))
    tasks = [
        exported_task(1, [exported_annotation(1, 1, 2, "low", lead_time=2.0)]),
        # webhook lost: what the task shows now
        exported_task(2, [exported_annotation(2, 2, 3, "high", lead_time=6.5)]),
        # pre-filled: the export holds the prediction itself, which wins over what was remembered
        exported_task(3, [exported_annotation(3, 3, 4, "high", parent_prediction=33, lead_time=0.8)],
                      [prediction(32, "low"), prediction(33, "high")]),
        # pre-filled from a prediction the export lists by id only: the remembered pre-fill
        exported_task(4, [exported_annotation(4, 4, 4, "low", parent_prediction=44, lead_time=1.0)], [44]),
    ]
    remember_shown(redis_client, PROJECT, 4, suggestion("low"))
    answer = apply_export(consensus, PROJECT, tasks, labels)
    assert answer["problems"] == [] and answer["votes"] == 4
    records = {a: stored(redis_client, a) for a in (1, 2, 3, 4)}
    assert records[1]["shown"] == suggestion("low", how="text") and records[1]["lead_time"] == 2.0
    assert records[2]["shown"] == suggestion("low", how="text") and records[2]["equal"] == {"aesthetic": False}
    assert records[2]["lead_time"] == 6.5 and records[2]["parent_prediction"] is None
    assert records[3]["shown"] == {"version": "v0002-20261102000000", "aesthetic": "high", "emotion": None,
                                   "how": "prefilled"}
    assert records[3]["parent_prediction"] == 33 and records[3]["equal"] == {"aesthetic": True}
    assert records[4]["shown"] == suggestion("low") and records[4]["equal"] == {"aesthetic": True}


def test_a_resynced_prefill_that_chose_nothing_shows_nothing(settings, redis_client, labels):
    consensus = ProjectConsensus(redis_client, settings)
    remember_shown(redis_client, PROJECT, 1, suggestion("low"))
    empty = {"id": 9, "model_version": "v0002-20261102000000", "score": 0.5, "result": []}
    apply_export(consensus, PROJECT, [exported_task(1, [exported_annotation(1, 1, 2, "low", parent_prediction=9)],
                                                    [empty])], labels)
    assert stored(redis_client, 1)["shown"] is None
