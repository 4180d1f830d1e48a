"""Votes from Label Studio webhooks, end to end through the Flask app and a real Redis.

Every body is built from the recorded Label Studio 1.23.2 webhooks
(docs/developers/label-studio-protocol.md §6, §9): only ids, authors, tasks, choices and
timestamps are changed. Redis is the session's embedded redis-server (conftest), or for the
persistence tests a server of the test's own.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import random
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from backend.core import keys
from backend.http.app import create_app
from backend.core.redis_connection import ensure_embedded_redis, stop_embedded_redis
from backend.training.queue import training_queue
from backend.votes.store import PROBLEMS_KEPT, Vote, VoteStore

from ls_examples import example
from net import wait_for

PROJECT = "1"   # the recorded bodies' project id
STATES = ("no_votes", "waiting", "agreed", "disputed")


# ----- bodies -----------------------------------------------------------------------------------


def stamp(n: int) -> str:
    """An updated_at in Label Studio's format; larger n = later."""
    return f"2026-11-27T12:{n // 60:02d}:{n % 60:02d}.000000Z"


def annotation_event(ann: int, task: int, user: int, aesthetic: str | None = "high", emotion: str | None = "awe",
                     at: int = 0, action: str = "ANNOTATION_CREATED", ground_truth: bool = False,
                     cancelled: bool = False) -> dict:
    """webhook_ANNOTATION_CREATED.json (or _UPDATED) with this annotation id, task, author and choices."""
    name = "webhook_ANNOTATION_UPDATED.json" if action == "ANNOTATION_UPDATED" else "webhook_ANNOTATION_CREATED.json"
    body = example(name)
    annotation, template = body["annotation"], body["annotation"]["result"]
    result = []
    if not cancelled:
        for region, choice in ((template[0], aesthetic), (template[1], emotion)):
            if choice is not None:
                region = copy.deepcopy(region)
                region["value"]["choices"] = [choice]
                result.append(region)
    annotation.update(id=ann, task=task, completed_by=user, updated_by=user, result=result,
                      result_count=len(result), was_cancelled=cancelled, ground_truth=ground_truth,
                      created_at=stamp(at), updated_at=stamp(at))
    body["task"].update(id=task, inner_id=task, data={"image": image_url(task), "note": "http url"})
    return body


def deleted_event(*ids: int) -> dict:
    body = example("webhook_ANNOTATIONS_DELETED.json")
    body["annotations"] = [{"id": i} for i in ids]
    return body


def image_url(task: int) -> str:
    return f"http://127.0.0.1:8099/images/img{task}.png"


def post(client, path, body, method="post"):
    return getattr(client, method)(path, data=json.dumps(body), content_type="application/json")


def send(client, body) -> dict:
    response = post(client, "/webhook", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def records(db, project: str = PROJECT) -> list[str]:
    """The stored votes, comparable as a whole (Vote holds a dict, so no set of Votes)."""
    return sorted(v.record() for v in VoteStore(db).all_votes(project))


def votes_by_annotation(db, project: str = PROJECT) -> dict:
    return {v.annotation: v for v in VoteStore(db).all_votes(project)}


def consensus_view(client, project: str = PROJECT) -> dict:
    """The admin's view: the summary and the tasks in every state."""
    summary = client.get(f"/projects/{project}/consensus")
    assert summary.status_code == 200, summary.get_data(as_text=True)
    view = {"summary": summary.get_json()}
    for state in STATES:
        tasks = client.get(f"/projects/{project}/consensus/tasks?state={state}")
        assert tasks.status_code == 200, tasks.get_data(as_text=True)
        view[state] = tasks.get_json()["tasks"]
    return view


def task_state(client, task: int, dimension: str = "aesthetic", project: str = PROJECT) -> dict | None:
    for state in STATES:
        for item in client.get(f"/projects/{project}/consensus/tasks?state={state}").get_json()["tasks"]:
            if item["task"] == task:
                return item[dimension]
    return None


# ----- fixtures ---------------------------------------------------------------------------------

@pytest.fixture
def db(redis_client) -> redis.Redis:
    return redis_client


@pytest.fixture
def client(settings, db):
    return create_app(settings).test_client()


# ----- idempotence and order ---------------------------------------------------------------------

def test_repeated_event_changes_nothing(client, db):
    event = annotation_event(1, 1, 2, "high", "awe", at=1)
    assert send(client, event)["votes"] == ["added"]
    stored = records(db)
    assert len(stored) == 1
    for _ in range(3):
        assert send(client, event)["votes"] == ["same"]
        assert records(db) == stored


def test_update_replaces(client, db):
    send(client, annotation_event(1, 1, 2, "high", "awe", at=1))
    reply = send(client, annotation_event(1, 1, 2, "low", "contentment", at=5, action="ANNOTATION_UPDATED"))
    assert reply["votes"] == ["changed"]
    vote = votes_by_annotation(db)[1]
    assert vote.labels == {"aesthetic": "low", "emotion": "contentment"}
    assert vote.updated_at == stamp(5)
    # the create arriving after the update is older: it does not undo it
    assert send(client, annotation_event(1, 1, 2, "high", "awe", at=1))["votes"] == ["stale"]
    assert votes_by_annotation(db)[1].labels == {"aesthetic": "low", "emotion": "contentment"}


def test_recorded_update_body_replaces_recorded_create(client, db):
    send(client, example("webhook_ANNOTATION_CREATED.json"))
    assert votes_by_annotation(db)[1].labels == {"aesthetic": "high", "emotion": "awe"}
    assert send(client, example("webhook_ANNOTATION_UPDATED.json"))["votes"] == ["changed"]
    assert votes_by_annotation(db)[1].labels == {"aesthetic": "high", "emotion": "contentment"}


def test_delete_removes(client, db):
    send(client, annotation_event(3, 1, 2, at=1))
    send(client, annotation_event(4, 1, 3, at=2))
    assert send(client, deleted_event(3))["deleted"] == 1
    assert set(votes_by_annotation(db)) == {4}
    assert [v.annotation for v in VoteStore(db).task_votes(PROJECT, 1)] == [4]


def test_delete_of_unseen_annotation_is_accepted_and_not_revived(client, db):
    assert send(client, deleted_event(42))["deleted"] == 0
    assert send(client, annotation_event(42, 1, 2, at=1))["votes"] == ["deleted"]
    assert send(client, annotation_event(42, 1, 2, "low", at=9, action="ANNOTATION_UPDATED"))["votes"] == ["deleted"]
    assert records(db) == []
    # other annotations of the task are unaffected
    assert send(client, annotation_event(43, 1, 3, at=2))["votes"] == ["added"]
    assert set(votes_by_annotation(db)) == {43}


def stream() -> list[dict]:
    """Creates, updates and deletes over tasks 11-13 by annotators 2-4, in Label Studio's order."""
    return [
        annotation_event(101, 11, 2, "high", "awe", at=1),
        annotation_event(102, 11, 3, "high", "awe", at=2),
        annotation_event(103, 11, 4, "low", "fear", at=3),
        annotation_event(103, 11, 4, "high", "awe", at=4, action="ANNOTATION_UPDATED"),
        annotation_event(104, 12, 2, "low", "sadness", at=5),
        annotation_event(105, 12, 3, "high", "fear", at=6),
        deleted_event(105),
        annotation_event(106, 12, 4, "low", "sadness", at=8),
        annotation_event(107, 13, 2, "high", "anger", at=9),
        deleted_event(107),
        annotation_event(108, 12, 3, "low", "fear", at=11),
        annotation_event(101, 11, 2, "low", "awe", at=12, action="ANNOTATION_UPDATED"),
    ]


def replay(client, db, events) -> tuple[list[str], dict]:
    db.flushdb()   # a fresh backend each time; the bodies carry the label config
    for event in events:
        send(client, event)
    return records(db), consensus_view(client)


def test_ordered_stream_result(client, db):
    stored, view = replay(client, db, stream())
    votes = votes_by_annotation(db)
    assert set(votes) == {101, 102, 103, 104, 106, 108}
    assert votes[101].labels == {"aesthetic": "low", "emotion": "awe"}
    assert votes[103].labels == {"aesthetic": "high", "emotion": "awe"}
    assert [t["task"] for t in view["agreed"]] == [11, 12]
    assert [t["task"] for t in view["no_votes"]] == [13]   # its only annotation was deleted
    assert view["summary"]["aesthetic"]["tasks"] == {"no_votes": 1, "waiting": 0, "agreed": 2, "disputed": 0}


def test_out_of_order_streams_end_the_same(client, db):
    ordered = replay(client, db, stream())
    rng = random.Random(20261127)
    for attempt in range(30):
        events = stream()
        rng.shuffle(events)
        assert replay(client, db, events) == ordered, f"shuffle {attempt}"


def test_duplicated_streams_end_the_same(client, db):
    ordered = replay(client, db, stream())
    assert replay(client, db, [e for e in stream() for _ in range(2)]) == ordered
    assert replay(client, db, stream() + stream()) == ordered
    rng = random.Random(7)
    for attempt in range(10):
        events = stream() + stream()
        rng.shuffle(events)
        assert replay(client, db, events) == ordered, f"shuffle {attempt}"


def stored_state(db, project: str = PROJECT) -> dict:
    """Everything an annotation event may write, the audit stream included (less its times)."""
    state = {name: sorted(db.smembers(getattr(keys, name)(project))) for name in ("tombstones", "deleted_tasks")}
    state["votes"] = records(db, project)
    state["images"] = db.hgetall(keys.images(project))
    state["tasks"] = {k: sorted(db.smembers(k)) for k in db.scan_iter(keys.task_votes_prefix(project) + "*")}
    state["label_config"] = db.hget(keys.setup(project), "label_config")
    state["projects"] = sorted(db.smembers(keys.PROJECTS))
    events = [json.loads(fields["event"]) for _, fields in db.xrange(keys.EVENTS)]
    state["events"] = [{k: v for k, v in e.items() if k != "received_at"} for e in events]
    return state


def without_label_config(event: dict) -> dict:
    """The same event naming only the project: the webhook then reads the stored label config."""
    return {**event, "project": {"id": event["project"]["id"]}}


def replay_state(client, db, events) -> dict:
    db.flushdb()
    config = example("webhook_ANNOTATION_CREATED.json")["project"]["label_config"]
    assert post(client, "/setup", {"project": PROJECT, "label_config": config}).status_code == 200
    for event in events:
        send(client, event)
    return stored_state(db)


def test_a_label_config_in_the_body_or_stored_gives_the_same_votes(client, db):
    rng = random.Random(11)
    for attempt in range(6):
        events = stream() + stream()[:5]
        rng.shuffle(events)
        fused = replay_state(client, db, events)
        assert fused["votes"] and fused["events"] and fused["label_config"]
        assert replay_state(client, db, [without_label_config(e) for e in events]) == fused, f"shuffle {attempt}"


def refused_bodies() -> dict[str, dict]:
    """Vote events that carry the label config and that the webhook refuses."""
    no_author = annotation_event(1, 1, 2, "high", "awe", at=1)
    del no_author["annotation"]["completed_by"]
    several = annotation_event(2, 1, 3, at=2)
    several["action"] = "ANNOTATIONS_CREATED"
    several["annotation"] = [annotation_event(3, 1, 4, at=3)["annotation"], no_author["annotation"],
                             annotation_event(4, 1, 5, at=4)["annotation"]]
    bad_config = annotation_event(5, 1, 2, at=5)
    bad_config["project"]["label_config"] = "<View><broken"
    return {"no author": no_author, "a bad one of several": several, "bad label config": bad_config}


def test_a_refused_vote_event_leaves_the_event_and_the_votes_before_the_bad_one(client, db):
    for name, body in refused_bodies().items():
        db.flushdb()
        response = post(client, "/webhook", body)
        stored = stored_state(db)
        assert response.status_code in (400, 422) and len(stored["events"]) == 1, name
        assert [json.loads(r)["annotation"] for r in stored["votes"]] == ([3] if name.endswith("several") else [])


def test_annotation_events_after_a_redis_restart(settings, own_redis):
    """The webhook reconnects, and its scripts are loaded again."""
    url = ensure_embedded_redis(own_redis)
    client = create_app(replace(settings, redis_url=url)).test_client()
    assert send(client, annotation_event(1, 1, 2, at=1))["votes"] == ["added"]
    db = redis.Redis.from_url(url, decode_responses=True)
    pid = _pid(own_redis)
    db.shutdown(nosave=False)  # the AOF keeps the vote; the script cache is gone
    wait_for(lambda: _gone(pid), 10, interval=0.02, what="redis-server to die")
    assert ensure_embedded_redis(own_redis) == url
    assert send(client, annotation_event(2, 1, 3, at=2))["votes"] == ["added"]
    assert set(votes_by_annotation(redis.Redis.from_url(url, decode_responses=True))) == {1, 2}


def test_label_config_sent_with_an_event_replaces_the_stored_one(client, db):
    body = annotation_event(1, 1, 2, "high", "awe", at=1)
    config = body["project"]["label_config"]
    changed = config.replace('<Choice value="awe"', '<Choice value="wonder"/><Choice value="awe"')
    assert changed != config
    post(client, "/setup", {"project": PROJECT, "label_config": config})
    body["project"]["label_config"] = changed
    body["annotation"]["result"][1]["value"]["choices"] = ["wonder"]
    assert send(client, body)["votes"] == ["added"]
    assert db.hget(keys.setup(PROJECT), "label_config") == changed
    assert votes_by_annotation(db)[1].labels == {"aesthetic": "high", "emotion": "wonder"}


# ----- times are instants, not text --------------------------------------------------------------

def timed_event(ann: int, user: int, aesthetic: str, updated_at, action: str = "ANNOTATION_CREATED",
                config_stored: bool = False) -> dict:
    body = annotation_event(ann, 1, user, aesthetic, None, action=action)
    body["annotation"]["updated_at"] = updated_at
    return without_label_config(body) if config_stored else body


def set_up_project(client) -> None:
    """The label config stored, for events that do not carry it (the step-by-step path)."""
    config = example("webhook_ANNOTATION_CREATED.json")["project"]["label_config"]
    assert post(client, "/setup", {"project": PROJECT, "label_config": config}).status_code == 200


@pytest.mark.parametrize("config_stored", [False, True], ids=["config-in-body", "config-stored"])
@pytest.mark.parametrize("older, newer", [
    ("2026-11-27T12:00:05Z", "2026-11-27T12:00:05.300000Z"),       # as text, "Z" sorts after "."
    ("2026-11-27T12:00:05.3Z", "2026-11-27T12:00:05.300001Z"),
    ("2026-11-27T12:30:00+01:00", "2026-11-27T12:00:00Z"),          # 11:30 UTC, then 12:00 UTC
    ("2026-11-27T12:00:00Z", "2026-11-27T07:30:00-05:00"),          # 12:00 UTC, then 12:30 UTC
])
def test_updates_are_ordered_by_instant_not_text(client, db, older, newer, config_stored):
    set_up_project(client)
    assert send(client, timed_event(1, 2, "high", older, config_stored=config_stored))["votes"] == ["added"]
    update = timed_event(1, 2, "low", newer, "ANNOTATION_UPDATED", config_stored)
    assert send(client, update)["votes"] == ["changed"]
    assert send(client, timed_event(1, 2, "high", older, config_stored=config_stored))["votes"] == ["stale"]
    assert votes_by_annotation(db)[1].labels["aesthetic"] == "low"


def test_latest_vote_of_an_annotator_is_the_latest_instant(client, db):
    """Two annotations of one annotator on one task: the later in time counts, whatever their ids
    and however their times are written."""
    send(client, timed_event(9, 2, "low", "2026-11-27T12:00:05.500000Z"))
    send(client, timed_event(10, 2, "high", "2026-11-27T12:00:05Z"))
    send(client, timed_event(11, 3, "high", "2026-11-27T13:00:00+01:00"))   # 12:00 UTC
    send(client, timed_event(12, 3, "low", "2026-11-27T12:30:00Z"))
    assert task_state(client, 1)["votes"] == {"2": "low", "3": "low"}


@pytest.mark.parametrize("config_stored", [False, True], ids=["config-in-body", "config-stored"])
@pytest.mark.parametrize("field, value", [
    ("updated_at", "yesterday"), ("updated_at", "2026-13-01T00:00:00Z"), ("updated_at", 1795782039),
    ("updated_at", ["2026-11-27T12:00:00Z"]), ("created_at", "27/11/2026 12:00"),
    # what Python's fromisoformat takes but is no date and time as Label Studio writes one
    ("updated_at", "2026-11-27T12:00:00\u0000Z"), ("updated_at", "2026-11-27T12:00:00Z\n"),
    ("updated_at", "2026-11-27T12:00:00\x7fZ"), ("created_at", "2026-W48-5"), ("updated_at", "20261127T120000"),
])
def test_bad_time_is_400_naming_the_field(client, db, field, value, config_stored):
    set_up_project(client)
    body = timed_event(1, 2, "high", "2026-11-27T12:00:00Z", config_stored=config_stored)
    if field == "created_at":
        del body["annotation"]["updated_at"]
    body["annotation"][field] = value
    response = post(client, "/webhook", body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert f'"{field}"' in response.get_json()["error"] and "ISO 8601" in response.get_json()["error"]
    assert records(db) == []


# ----- what counts as a vote ---------------------------------------------------------------------

def test_same_annotator_twice_counts_once_their_latest(client, db):
    send(client, annotation_event(201, 1, 2, "high", at=1))
    send(client, annotation_event(202, 1, 3, "low", at=2))
    send(client, annotation_event(203, 1, 2, "low", at=3))   # user 2 annotates task 1 again
    state = task_state(client, 1)
    assert state["state"] == "waiting"          # 2 people, not 3 votes (min_annotators 3)
    assert state["votes"] == {"2": "low", "3": "low"}
    send(client, annotation_event(204, 1, 4, "high", at=4))
    state = task_state(client, 1)
    # counted twice, user 2 would make it 2 high : 2 low, a tie
    assert (state["state"], state["label"], state["soft"]) == ("agreed", "low", {"low": 2 / 3, "high": 1 / 3})
    # the older annotation arriving again (or an older one of higher id) does not win
    send(client, annotation_event(205, 1, 2, "high", at=0))
    assert task_state(client, 1)["votes"]["2"] == "low"


def test_skipped_annotations_are_not_votes(client, db):
    for ann, user in ((301, 2), (302, 3), (303, 4)):
        assert send(client, annotation_event(ann, 1, user, cancelled=True, at=ann))["votes"] == ["added"]
    stored = votes_by_annotation(db)
    assert all(v.cancelled and not v.is_vote() for v in stored.values())
    assert all(v.labels == {"aesthetic": None, "emotion": None} for v in stored.values())
    view = consensus_view(client)
    assert view["agreed"] == [] and view["waiting"] == []
    assert [t["task"] for t in view["no_votes"]] == [1]
    # two real votes next to three skips: still waiting for a third person
    send(client, annotation_event(304, 1, 5, "high", at=310))
    send(client, annotation_event(305, 1, 6, "high", at=311))
    assert task_state(client, 1)["state"] == "waiting"
    assert set(task_state(client, 1)["votes"]) == {"5", "6"}


def test_skip_keeping_a_result_is_not_a_vote(client, db):
    body = annotation_event(306, 1, 2, "high", "awe", at=1)
    body["annotation"]["was_cancelled"] = True     # cancelled, yet the result is still there
    send(client, body)
    assert not votes_by_annotation(db)[306].is_vote()
    assert task_state(client, 1)["state"] == "no_votes"


def test_aesthetic_only_annotation_votes_for_aesthetic_only(client, db):
    for ann, user in ((401, 2), (402, 3), (403, 4)):
        send(client, annotation_event(ann, 1, user, "low", None, at=ann))
    assert votes_by_annotation(db)[401].labels == {"aesthetic": "low", "emotion": None}
    aesthetic, emotion = task_state(client, 1, "aesthetic"), task_state(client, 1, "emotion")
    assert (aesthetic["state"], aesthetic["label"]) == ("agreed", "low")
    assert (emotion["state"], emotion["votes"]) == ("no_votes", {})


def test_ground_truth_decides_against_the_majority(client, db):
    for ann, user in ((501, 2), (502, 3), (503, 4)):
        send(client, annotation_event(ann, 1, user, "high", "awe", at=ann))
    assert task_state(client, 1)["label"] == "high"
    send(client, annotation_event(504, 1, 5, "low", "fear", at=600, ground_truth=True))
    for dimension, label in (("aesthetic", "low"), ("emotion", "fear")):
        state = task_state(client, 1, dimension)
        assert (state["state"], state["label"], state["soft"]) == ("agreed", label, {label: 1.0})
    # one ground-truth annotation alone decides too, below min_annotators
    send(client, annotation_event(505, 2, 5, "high", "awe", at=601, ground_truth=True))
    assert task_state(client, 2)["state"] == "agreed"


# ----- bad input ---------------------------------------------------------------------------------

def test_unknown_project_without_label_config_is_404(client, db):
    body = annotation_event(601, 1, 2, at=1)
    body["project"] = {"id": 77, "title": "never set up"}
    response = post(client, "/webhook", body)
    assert response.status_code == 404, response.get_data(as_text=True)
    assert "77" in response.get_json()["error"]
    assert records(db, "77") == []
    assert client.get("/projects/77/consensus").status_code == 404


def test_unknown_project_learned_from_the_body(client, db):
    body = annotation_event(602, 1, 2, at=1)
    body["project"]["id"] = 78
    assert send(client, body)["votes"] == ["added"]
    assert set(votes_by_annotation(db, "78")) == {602}
    # learned: later events without the label config are fine, and the admin endpoints work
    later = annotation_event(603, 1, 3, at=2)
    later["project"] = {"id": 78}
    assert send(client, later)["votes"] == ["added"]
    assert client.get("/projects/78/consensus").status_code == 200
    assert records(db, PROJECT) == []


@pytest.mark.parametrize("field", ["completed_by", "result"])
def test_annotation_missing_a_field_is_400(client, db, field):
    body = annotation_event(701, 1, 2, at=1)
    del body["annotation"][field]
    response = post(client, "/webhook", body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert field in response.get_json()["error"]
    assert records(db) == []


@pytest.mark.parametrize("data", ["http://127.0.0.1:8099/images/img1.png", ["a"], {"image": {"url": "x"}}, None])
def test_a_task_whose_data_holds_no_image_url_still_records_the_vote(client, db, data):
    body = annotation_event(711, 1, 2, at=1)
    body["task"]["data"] = data
    assert send(client, body)["votes"] == ["added"]
    assert len(records(db)) == 1


def test_choice_not_in_config_keeps_the_valid_dimension(client, db):
    body = annotation_event(801, 1, 2, "medium", "awe", at=1)
    assert send(client, body)["votes"] == ["added"]
    vote = votes_by_annotation(db)[801]
    assert vote.labels == {"aesthetic": None, "emotion": "awe"}
    assert len(vote.problems) == 1 and "'medium'" in vote.problems[0] and "aesthetic" in vote.problems[0]
    body = annotation_event(802, 1, 3, "high", "boredom", at=2)
    send(client, body)
    vote = votes_by_annotation(db)[802]
    assert vote.labels == {"aesthetic": "high", "emotion": None}
    assert "'boredom'" in vote.problems[0]
    assert task_state(client, 1, "emotion")["votes"] == {"2": "awe"}


@pytest.mark.parametrize("config_stored", [False, True], ids=["config-in-body", "config-stored"])
def test_unknown_choices_are_cut_and_counted_in_a_small_record_and_one_log_line(client, db, caplog, config_stored):
    set_up_project(client)
    body = annotation_event(811, 1, 2, "high", None)
    region = body["annotation"]["result"][0]
    huge = "x" * 1_000_000
    body["annotation"]["result"] = [{**region, "value": {"choices": [huge]}}] + [
        {**region, "value": {"choices": [f"unknown-{n}"]}} for n in range(10_000)]
    body["annotation"]["result"].append({**region, "value": {"choices": ["low"]}})
    with caplog.at_level(logging.WARNING, logger="backend.votes.store"):
        assert send(client, without_label_config(body) if config_stored else body)["votes"] == ["added"]
    vote = votes_by_annotation(db)[811]
    assert vote.labels == {"aesthetic": "low", "emotion": None}
    assert len(vote.record()) < 1024, len(vote.record())
    assert len(vote.problems) == PROBLEMS_KEPT + 1 and "'xxxx" in vote.problems[0] and "'unknown-1'" in vote.problems[2]
    assert vote.problems[-1] == f"{10_001 - PROBLEMS_KEPT} more region(s) without one known choice"
    lines = [r.getMessage() for r in caplog.records if "annotation 811" in r.getMessage()]
    assert len(lines) == 1 and len(lines[0]) < 1024, (len(lines), len(lines[0]) if lines else 0)


def test_events_for_deleted_tasks(client, db):
    send(client, annotation_event(901, 31, 2, at=1))
    send(client, annotation_event(902, 32, 2, at=2))
    body = example("webhook_ANNOTATIONS_DELETED.json")
    gone = {"action": "TASKS_DELETED", "tasks": [{"id": 31}], "project": body["project"]}
    assert send(client, gone)["votes_removed"] == 1
    assert set(votes_by_annotation(db)) == {902}
    # a late event of a deleted task
    assert send(client, annotation_event(903, 31, 3, at=3))["votes"] == ["task_deleted"]
    assert send(client, annotation_event(901, 31, 2, "low", at=4, action="ANNOTATION_UPDATED"))["votes"] == \
        ["task_deleted"]
    assert set(votes_by_annotation(db)) == {902}
    assert VoteStore(db).task_votes(PROJECT, 31) == []
    assert 31 not in {t["task"] for s in STATES for t in consensus_view(client)[s]}


def test_start_training_queues_a_job(settings, db):
    client = create_app(replace(settings, min_training_labels=1)).test_client()
    agree_on(client, 1)
    reply = send(client, example("webhook_START_TRAINING.json"))
    assert reply["action"] == "START_TRAINING" and reply["training"]["state"] == "queued"
    assert training_requests(settings) == [(PROJECT, "START_TRAINING")]


# ----- persistence -------------------------------------------------------------------------------

def _pid(folder: Path) -> int:
    return int((folder / "redis" / "redis.pid").read_text().strip())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def own_redis(tmp_path):
    folder = tmp_path / "own-redis"
    yield folder
    stop_embedded_redis(folder)


def test_votes_survive_a_redis_restart(settings, own_redis):
    url = ensure_embedded_redis(own_redis)
    mine = replace(settings, redis_url=url)
    client = create_app(mine).test_client()
    for event in stream():
        send(client, event)
    before = records(redis.Redis.from_url(url, decode_responses=True))
    view = consensus_view(client)
    assert len(before) == 6
    pid = _pid(own_redis)

    stop_embedded_redis(own_redis)
    wait_for(lambda: _gone(pid), 10, interval=0.02, what="SHUTDOWN to stop redis-server")
    assert not (own_redis / "redis" / "redis.pid").exists()

    url = ensure_embedded_redis(own_redis)
    assert _pid(own_redis) != pid
    assert records(redis.Redis.from_url(url, decode_responses=True)) == before
    assert consensus_view(create_app(replace(mine, redis_url=url)).test_client()) == view


def _aof_written(db: redis.Redis) -> bool:
    """Redis has handed every write to the append-only file (kill -9 cannot lose what the kernel holds)."""
    info = db.info("persistence")
    return info["aof_buffer_length"] == 0 and info["aof_pending_bio_fsync"] == 0


def test_votes_survive_kill_9_once_written(settings, own_redis):
    url = ensure_embedded_redis(own_redis)
    client = create_app(replace(settings, redis_url=url)).test_client()
    for event in stream():
        send(client, event)
    before = records(redis.Redis.from_url(url, decode_responses=True))
    wait_for(lambda: _aof_written(redis.Redis.from_url(url)), 10, interval=0.05, what="the append-only file")
    pid = _pid(own_redis)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _gone(pid), 10, interval=0.02, what="redis-server to die")

    url = ensure_embedded_redis(own_redis)
    assert _pid(own_redis) != pid
    restarted = redis.Redis.from_url(url, decode_responses=True)
    assert records(restarted) == before
    assert restarted.sismember(keys.tombstones("1"), 105)


# ----- the auto-training trigger ------------------------------------------------------------------

def training_requests(settings) -> list[tuple[str, str]]:
    """(project, reason) of each training request in the RQ queue's jobs: a request made while
    a job is queued merges into it."""
    return [(job.meta["project"], request["reason"]) for job in training_queue(settings).get_jobs()
            for request in job.meta["requests"]]


def new_labels(db) -> int:
    """Labels agreed since the last snapshot: what the auto-training threshold is checked against."""
    return int(db.get(keys.new_labels(PROJECT)) or 0)


def agree_on(client, task: int) -> None:
    """Three people choose the same aesthetic class (no emotion): one new agreed label."""
    for user in (2, 3, 4):
        send(client, annotation_event(task * 10 + user, task, user, "high", None, at=task * 10 + user))


@pytest.fixture
def trigger_settings(settings):
    return replace(settings, auto_train_threshold=3, resync_before_snapshot=False, min_training_labels=1)


def test_auto_training_fires_at_each_threshold(trigger_settings, db):
    client = create_app(trigger_settings).test_client()
    counts = []
    for task in (1, 2):
        agree_on(client, task)
        counts.append(len(training_requests(trigger_settings)))
    # the third label: nothing before its third vote, one request with it
    send(client, annotation_event(32, 3, 2, "high", None, at=32))
    send(client, annotation_event(33, 3, 3, "high", None, at=33))
    assert len(training_requests(trigger_settings)) == 0
    send(client, annotation_event(34, 3, 4, "high", None, at=34))
    counts.append(len(training_requests(trigger_settings)))
    send(client, annotation_event(34, 3, 4, "high", None, at=34))   # repeated: not a new label
    for task in (4, 5, 6):
        agree_on(client, task)
        counts.append(len(training_requests(trigger_settings)))
    assert counts == [0, 0, 1, 1, 1, 2]
    assert training_requests(trigger_settings) == [(PROJECT, "auto")] * 2
    assert new_labels(db) == 6

    agree_on(client, 7)                                   # 7 labels since the start
    response = client.post(f"/projects/{PROJECT}/snapshot")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["rows"] == 7
    # counted from the snapshot: 1, 2 (no request; without the reset 9 would fire), 3 fires
    agree_on(client, 8)
    agree_on(client, 9)
    assert len(training_requests(trigger_settings)) == 2
    agree_on(client, 10)
    assert len(training_requests(trigger_settings)) == 3
    assert new_labels(db) == 3


def test_auto_training_when_one_event_brings_two_labels(trigger_settings, db):
    """A task agreed on both dimensions at once adds 2 labels: 1 -> 3 fires, 3 -> 5 does not,
    5 -> 7 steps over 6 and fires."""
    client = create_app(trigger_settings).test_client()
    agree_on(client, 1)                                          # 1 label
    counts = []
    for task in (2, 3, 4):
        for user in (2, 3, 4):
            send(client, annotation_event(task * 10 + user, task, user, "low", "awe", at=task * 10 + user))
        counts.append(len(training_requests(trigger_settings)))
    assert counts == [1, 1, 2]
    assert new_labels(db) == 7


def test_auto_training_off_at_threshold_zero(trigger_settings, db):
    client = create_app(replace(trigger_settings, auto_train_threshold=0)).test_client()
    for task in range(1, 8):
        agree_on(client, task)
    assert training_requests(trigger_settings) == []


def test_record_round_trip_and_older_records():
    from backend.votes.store import Vote
    vote = Vote(annotation=5, task=2, annotator=3, updated_at="2026-11-27T12:00:00Z",
                labels={"aesthetic": "high", "emotion": None}, ground_truth=True, problems=("x: bad",))
    back = Vote.from_record(vote.record())
    assert back == vote and isinstance(back.problems, tuple) and repr(back) == repr(vote)
    with pytest.raises(AttributeError):           # still frozen
        back.task = 3
    # a record written before "problems" and what the annotator was shown existed decodes
    # through __init__, defaults filled
    older = json.loads(vote.record())
    for name in ("problems", "parent_prediction", "lead_time", "shown", "equal"):
        del older[name]
    assert Vote.from_record(json.dumps(older)) == Vote(**{**older, "problems": ()})
    with pytest.raises(TypeError):                # an unknown field is refused as before
        Vote.from_record(json.dumps({**older, "surprise": 1}))


def test_a_vote_built_without_its_instant_takes_it_from_its_text():
    vote = Vote(annotation=5, task=2, annotator=3, updated_at="2026-11-27T13:00:00.25+01:00", labels={})
    assert vote.updated_us == 1795780800250000
    assert Vote.from_record(vote.record()) == vote
    with pytest.raises(ValueError, match="ISO 8601"):
        Vote(annotation=5, task=2, annotator=3, updated_at="", labels={})


# ----- what the annotator was shown and how long they took ---------------------------------------

def test_a_vote_records_its_parent_prediction_and_lead_time(client, db):
    body = annotation_event(801, 8, 2, "low", "fear", at=1)
    body["annotation"].update(parent_prediction=37, lead_time=2.5)
    send(client, body)
    vote = votes_by_annotation(db)[801]
    assert (vote.parent_prediction, vote.lead_time) == (37, 2.5)
    plain = annotation_event(802, 8, 3, "low", "fear", at=2)
    plain["annotation"].update(parent_prediction=None)
    plain["annotation"].pop("lead_time", None)
    send(client, plain)
    assert (votes_by_annotation(db)[802].parent_prediction, votes_by_annotation(db)[802].lead_time) == (None, None)


@pytest.mark.parametrize("field, value", [("parent_prediction", "x"), ("parent_prediction", -1),
                                          ("parent_prediction", 0), ("parent_prediction", 2 ** 63),
                                          ("parent_prediction", 1.5), ("lead_time", -1), ("lead_time", float("inf")),
                                          ("lead_time", "4"), ("lead_time", True), ("lead_time", 1e12),
                                          ("lead_time", [1])])
def test_a_bad_parent_prediction_or_lead_time_is_400_naming_it(client, db, field, value):
    body = annotation_event(803, 8, 2, at=1)
    body["annotation"][field] = value
    response = post(client, "/webhook", body)
    assert response.status_code == 400 and field in response.get_json()["error"], response.get_data(as_text=True)
    assert records(db) == []


def test_the_resync_records_the_same_from_the_export():
    from backend.labelstudio.label_config import parse_label_config
    from backend.votes.resync import votes_from_export
    body = example("webhook_ANNOTATION_CREATED.json")
    labels = parse_label_config(body["project"]["label_config"])
    annotation = {**body["annotation"], "parent_prediction": 12, "lead_time": 7.25}
    votes, _, problems, _ = votes_from_export([{"id": body["task"]["id"], "data": body["task"]["data"],
                                                "annotations": [annotation]}], labels)
    assert problems == [] and [(v.parent_prediction, v.lead_time) for v in votes] == [(12, 7.25)]
