"""What suggestions do to votes: each vote records what its annotator was shown (from the webhook
and from the resync's export), how long they took and whether they kept the suggestion; the
consensus sets aside votes that only confirmed the suggestion in a hurry (unless the policy
counts them) and the snapshot says how many rows that left out; control tasks are a stable share
of the tasks; and the admin page's anchoring figures single out an annotator who rubber-stamps.

Bodies are the recorded Label Studio 1.23.2 webhook with ids, authors, choices, parent_prediction
and lead_time changed; Redis is the session's real one (conftest)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from ls_examples import example

from backend.core import keys
from backend.http.app import create_app
from backend.labelstudio.label_config import parse_label_config
from backend.serving.prediction_store import store_predictions
from backend.serving.registry import set_current_version
from backend.votes.consensus import Policy, compute
from backend.votes.control import is_control_task
from backend.votes.project_consensus import ProjectConsensus
from backend.votes.resync import apply_export
from backend.votes.shown import remember_shown, shown_for
from backend.votes.store import Vote

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


# ----- the consensus policy ---------------------------------------------------------------------------

_ids = iter(range(1, 10 ** 9))


def vote(task: int, annotator: int, aesthetic: str, shown: str | None = None, seconds: float | None = 10.0,
         ground_truth: bool = False) -> Vote:
    return Vote(annotation=next(_ids), task=task, annotator=annotator, updated_at="2026-11-27T12:00:00Z",
                labels={"aesthetic": aesthetic, "emotion": None}, lead_time=seconds, ground_truth=ground_truth,
                shown=suggestion(shown) if shown is not None else None)


def decide(votes, task=1, **policy):
    return compute(votes, CLASSES, Policy(**policy), tasks=[task])["aesthetic"][task]


def test_fast_votes_equal_to_the_suggestion_do_not_count_by_default():
    stamps = [vote(1, 1, "high", shown="high", seconds=1.0), vote(1, 2, "high", shown="high", seconds=2.9)]
    honest = vote(1, 3, "low", shown="high", seconds=1.0)    # fast, but against the suggestion: counted
    result = decide(stamps + [honest])
    assert result.state == "waiting" and result.votes == {3: "low"}
    assert result.set_aside == {1: "high", 2: "high"}
    # only rubber stamps agree: the task stays open for more votes
    assert decide(stamps + [vote(1, 3, "high", shown="high", seconds=0.5)]).state == "waiting"
    # with the option, or slower than the threshold, they count
    counted = decide(stamps + [honest], count_fast_agreement=True)
    assert counted.state == "agreed" and counted.label == "high" and counted.set_aside == {}
    assert decide(stamps + [honest], rubber_stamp_seconds=0.5).label == "high"
    # what was not shown, no time sent, or a ground truth: counted as before
    for other in (vote(1, 1, "high"), vote(1, 1, "high", shown="high", seconds=None),
                  vote(1, 1, "high", shown="high", seconds=1.0, ground_truth=True)):
        assert decide([other]).votes == {1: "high"}


def test_set_aside_votes_leave_dawid_skene_and_the_summary_counts_them():
    votes = [vote(t, 1, "high", shown="high", seconds=1.0) for t in range(1, 5)]
    votes += [vote(t, a, "low") for t in range(1, 5) for a in (2, 3, 4)]
    result = compute(votes, CLASSES, Policy(method="dawid_skene"))["aesthetic"]
    assert all(c.state == "agreed" and c.label == "low" and 1 not in c.votes for c in result.values())
    from backend.votes.consensus import summary
    assert summary({"aesthetic": result, "emotion": {}}, CLASSES)["aesthetic"]["set_aside_votes"] == 4


def test_the_policy_option_through_the_endpoint(settings, redis_client):
    client = create_app(settings).test_client()
    remember_shown(redis_client, PROJECT, 1, suggestion("high"))
    for ann, user in ((1, 2), (2, 3), (3, 4)):
        send(client, annotation_event(ann, 1, user, "high", parent_prediction=10, lead_time=1.0))

    def aesthetic():
        return client.get(f"/projects/{PROJECT}/consensus").get_json()["aesthetic"]

    assert aesthetic()["tasks"]["waiting"] == 1 and aesthetic()["set_aside_votes"] == 3
    response = client.put(f"/projects/{PROJECT}/consensus/policy", json={"count_fast_agreement": True})
    assert response.status_code == 200 and response.get_json()["policy"]["count_fast_agreement"] is True
    assert aesthetic()["tasks"]["agreed"] == 1 and aesthetic()["set_aside_votes"] == 0
    response = client.put(f"/projects/{PROJECT}/consensus/policy", json={"count_fast_agreement": "no"})
    assert response.status_code == 400 and "count_fast_agreement" in response.get_json()["error"]


def test_the_snapshot_says_how_many_rows_it_left_out_and_why(settings, redis_client, labels):
    consensus = ProjectConsensus(redis_client, settings)
    votes = ([vote(1, a, "high") for a in (1, 2, 3)]                                    # agreed: a row
             + [vote(2, a, "low", shown="low", seconds=1.0) for a in (1, 2)] + [vote(2, 3, "low")]  # rubber stamps
             + [vote(3, a, "high", shown="high", seconds=1.0) for a in (1, 2, 3)]       # rubber stamps only
             + [vote(4, a, "low") for a in (1, 2, 3)])                                   # agreed, no image
    for v in votes:
        consensus.votes.apply(PROJECT, v, image_url(v.task) if v.task != 4 else None)
    snap = consensus.snapshot(PROJECT, labels)
    assert snap["rows"] == 1 and snap["left_out"] == {"no_image": 1, "fast_agreement": 2}
    header = json.loads(Path(snap["path"]).read_text().splitlines()[0])
    assert header["left_out"] == snap["left_out"] and header["set_aside_votes"] == {"aesthetic": 5, "emotion": 0}
    assert "rubber_stamp_seconds" in header["left_out_why"]["fast_agreement"]
    assert "image" in header["left_out_why"]["no_image"]
    consensus.set_policy(PROJECT, {"count_fast_agreement": True})
    assert consensus.snapshot(PROJECT, labels)["left_out"] == {"no_image": 1, "fast_agreement": 0}


# ----- control tasks ------------------------------------------------------------------------------------

def test_control_tasks_are_the_hash_of_the_task_id_below_the_fraction():
    for task in (1, 2, 17, 123456789, 2 ** 62):
        digest = hashlib.sha256(str(task).encode()).digest()
        assert is_control_task(task, 0.1) == (int.from_bytes(digest[:8], "big") / 2 ** 64 < 0.1)
    ids = range(1, 20_001)
    for fraction in (0.05, 0.1, 0.5):
        share = sum(is_control_task(t, fraction) for t in ids) / len(ids)
        assert abs(share - fraction) < 0.01, (fraction, share)
    assert not any(is_control_task(t, 0) for t in ids)
    # a larger fraction keeps every control task of a smaller one
    assert all(is_control_task(t, 0.2) for t in ids if is_control_task(t, 0.1))


def test_control_tasks_are_the_same_in_another_process():
    here = [t for t in range(1, 2001) if is_control_task(t, 0.1)]
    code = ("from backend.votes.control import is_control_task; "
            "print([t for t in range(1, 2001) if is_control_task(t, 0.1)])")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                         env={"PYTHONPATH": str(root), "PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert json.loads(out.stdout) == here


# ----- the measured anchoring on the admin page ---------------------------------------------------------

HONEST, ALSO_HONEST, STAMPER = 2, 3, 4
VERSION = "v0001-20261101000000"


def constructed_project(client, db, settings) -> None:
    """80 tasks, half of them control tasks; the model's suggestion is right on 3 tasks in 5. Two
    annotators judge every image (9 in 10 right, 8 s a task); the third keeps every suggestion in
    a second and judges only the control tasks (8 in 10 right)."""
    truth = {t: AESTHETIC[t % 2] for t in range(1, 81)}
    other = {"high": "low", "low": "high"}
    model = {t: truth[t] if t % 5 not in (0, 2) else other[truth[t]] for t in truth}
    control = {t for t in truth if is_control_task(t, settings.control_fraction)}
    ann = iter(range(1, 10 ** 6))
    for t, right in truth.items():
        shown = None if t in control else suggestion(model[t])
        remember_shown(db, PROJECT, t, shown)
        parent = None if t in control else 1000 + t
        for user, wrong in ((HONEST, t % 10 == 3), (ALSO_HONEST, t % 10 == 7)):
            send(client, annotation_event(next(ann), t, user, other[right] if wrong else right,
                                          parent_prediction=parent, lead_time=8.0))
        if t in control:
            send(client, annotation_event(next(ann), t, STAMPER, other[right] if t % 10 in (1, 6) else right,
                                          lead_time=2.5))
        else:
            send(client, annotation_event(next(ann), t, STAMPER, model[t], parent_prediction=parent, lead_time=1.0))
    # what the served version would have suggested on the control tasks, kept as /predict keeps it
    set_current_version(db, PROJECT, VERSION)
    template = example("webhook_ANNOTATION_CREATED.json")["annotation"]["result"][0]
    store_predictions(db, PROJECT, VERSION, {t: (image_url(t), {"model_version": VERSION, "score": 0.6, "result": [
        {**template, "value": {"choices": [model[t]]}}]}) for t in control}, 3600)


def test_the_anchoring_figures_single_out_the_rubber_stamper(settings, redis_client):
    settings = replace(settings, control_fraction=0.5)
    client = create_app(settings).test_client()
    send(client, annotation_event(10 ** 6, 10 ** 6, 9, "high"))     # the project known, its label config stored
    assert client.put(f"/projects/{PROJECT}/consensus/policy", json={"min_annotators": 2}).status_code == 200
    constructed_project(client, redis_client, settings)

    anchoring = client.get(f"/projects/{PROJECT}/consensus").get_json()["anchoring"]["aesthetic"]
    people = anchoring["annotators"]
    assert people[str(STAMPER)]["rubber_stamping"] is True
    assert people[str(HONEST)]["rubber_stamping"] is False and people[str(ALSO_HONEST)]["rubber_stamping"] is False
    stamper = people[str(STAMPER)]
    assert stamper["accepted"]["share"] == 1.0 and stamper["fast_accepted"]["share"] == 1.0
    assert stamper["median_seconds"] < 3 < people[str(HONEST)]["median_seconds"]
    assert stamper["excess_acceptance"] > 0.3 > abs(people[str(HONEST)]["excess_acceptance"])
    assert stamper["name"] == "user 4"
    project = anchoring["project"]
    # the rubber stamps were set aside: the consensus follows the suggestion no more than the model is right
    assert project["consensus_equals_suggestion"]["share"] < 0.75
    assert project["model_right_on_control"]["n"] > 20
    assert abs(project["consensus_equals_suggestion"]["share"] - project["model_right_on_control"]["share"]) < 0.2

    page = client.get(f"/?project={PROJECT}").get_data(as_text=True)
    rows = {int(user): row for user, row in _anchoring_rows(page, "aesthetic")}
    assert "rubber-stamping" in rows[STAMPER] and "accepts far more" in rows[STAMPER]
    assert "rubber-stamping" not in rows[HONEST] and "rubber-stamping" not in rows[ALSO_HONEST]
    assert "the suggestions' pull" in page and "is set aside" in page


def _anchoring_rows(page: str, dimension: str) -> list[tuple[str, str]]:
    table = page.split(f'id="anchoring-{dimension}"', 1)[1].split("</table>", 1)[0]
    rows = []
    for chunk in table.split("<tr")[2:]:
        user = chunk.split('data-annotator="', 1)[1].split('"', 1)[0]
        rows.append((user, chunk))
    return rows


# ----- what the serving side remembers showing ----------------------------------------------------------

def test_predict_remembers_what_label_studio_may_prefill_and_a_vote_records_it(settings, redis_client, images):
    from training_project import predict_body
    settings = replace(settings, allowed_image_hosts=(images.netloc,), control_fraction=0.5)
    client = create_app(settings).test_client()
    urls = [images.url(f"/img/{i}.png") for i in range(1, 7)]
    answer = client.post("/predict", json=predict_body(int(PROJECT), urls))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    results = answer.get_json()["results"]
    control = [t for t in range(1, 7) if is_control_task(t, 0.5)]
    assert control and len(control) < 6
    for task, result in enumerate(results, 1):
        shown = shown_for(redis_client, PROJECT, task)
        if task in control:
            assert shown is None
            continue
        chosen = {r["from_name"]: r["value"]["choices"][0] for r in result["result"]}
        assert shown == {"version": answer.get_json()["model_version"], "how": "prefilled", **chosen}
    # an annotation pre-filled from it and kept, in a second: recorded as the suggestion kept
    task = next(t for t in range(1, 7) if t not in control)
    kept = shown_for(redis_client, PROJECT, task)
    body = annotation_event(1, task, 2, kept["aesthetic"], kept["emotion"], parent_prediction=5, lead_time=1.0)
    body["task"]["data"] = {"image": urls[task - 1]}
    send(client, body)
    assert stored(redis_client, 1)["equal"] == {"aesthetic": True, "emotion": True}


def test_predict_keeps_a_task_whose_data_shows_the_suggestion_text_as_shown_as_text(settings, redis_client, images):
    """A vote without `parent_prediction` on such a task was shown the text: /predict, answering
    after the refresh wrote it, must not turn the record into a pre-fill (which reads as nothing
    shown when the project hides predictions)."""
    from importlib import resources

    from training_project import predict_body

    from backend.labelstudio.label_config import parse_label_config
    from backend.serving.suggestion_text import data_with_text, suggestion_text
    shipped = (resources.files("backend.labelstudio") / "aesthetic_emotion.xml").read_text()
    settings = replace(settings, allowed_image_hosts=(images.netloc,))
    client = create_app(settings).test_client()
    body = predict_body(int(PROJECT), [images.url("/img/1.png"), images.url("/img/2.png")])
    body["label_config"] = shipped
    first = client.post("/predict", json=body).get_json()["results"]
    labels = parse_label_config(shipped)
    # the refresh wrote task 1's text since; task 2's data shows none
    body["tasks"][0]["data"] = data_with_text(labels, body["tasks"][0]["data"],
                                              suggestion_text(labels, first[0]))
    again = client.post("/predict", json=body)
    assert again.status_code == 200, again.get_data(as_text=True)
    assert shown_for(redis_client, PROJECT, 1)["how"] == "text"
    assert shown_for(redis_client, PROJECT, 2)["how"] == "prefilled"
    vote = annotation_event(1, 1, 2, "high", "awe", parent_prediction=None, lead_time=4.0)
    vote["task"]["data"] = body["tasks"][0]["data"]
    send(client, vote)
    assert stored(redis_client, 1)["shown"]["how"] == "text"
