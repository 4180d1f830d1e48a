"""Consensus from votes: majority vote, Dawid-Skene, Krippendorff's alpha, the summary, and the
training-set snapshot. Pure functions on Vote objects, except where the policy endpoint and the
snapshot need the app and the session's real Redis (conftest)."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.core import keys
from backend.http.app import create_app
from backend.votes.consensus import Policy, compute, krippendorff_alpha, summary
from backend.labelstudio.label_config import parse_label_config
from backend.votes.project_consensus import ProjectConsensus
from backend.votes.store import Vote
from model.dataset import load_training_data
from model.manifest import read_manifest

AESTHETIC = ("high", "low")
EMOTION = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")
CLASSES = {"aesthetic": AESTHETIC, "emotion": EMOTION}

from ls_examples import example



_ids = iter(range(1, 10**9))


def vote(task: int, annotator: int, aesthetic: str | None = None, emotion: str | None = None, at: int = 0,
         ground_truth: bool = False, annotation: int | None = None) -> Vote:
    return Vote(annotation=annotation if annotation is not None else next(_ids), task=task, annotator=annotator,
                updated_at=f"2026-11-27T12:00:{at:02d}.000000Z",
                labels={"aesthetic": aesthetic, "emotion": emotion}, ground_truth=ground_truth)


def aesthetic_votes(task: int, *choices: str) -> list[Vote]:
    return [vote(task, annotator, aesthetic=c) for annotator, c in enumerate(choices, start=1)]


def emotion_votes(task: int, *choices: str) -> list[Vote]:
    return [vote(task, annotator, emotion=c) for annotator, c in enumerate(choices, start=1)]


def decide(votes, dimension="aesthetic", task=1, **policy):
    return compute(votes, CLASSES, Policy(**policy), tasks=[task])[dimension][task]


# ----- majority vote -----------------------------------------------------------------------------

def test_no_votes():
    c = decide([], task=5)
    assert (c.state, c.label, c.soft, c.votes) == ("no_votes", None, {}, {})
    assert compute([], CLASSES, Policy()) == {"aesthetic": {}, "emotion": {}}


def test_waiting_below_min_annotators():
    c = decide(aesthetic_votes(1, "high", "high"), min_annotators=3)
    assert (c.state, c.label) == ("waiting", None)
    assert c.soft == {"high": 1.0}
    c = decide(aesthetic_votes(1, "high", "high"), min_annotators=2)
    assert (c.state, c.label) == ("agreed", "high")


def test_agreed_soft_label_is_the_vote_distribution():
    c = decide(aesthetic_votes(1, "high", "low", "high"))
    assert (c.state, c.label) == ("agreed", "high")
    assert c.soft == pytest.approx({"high": 2 / 3, "low": 1 / 3})
    assert c.agreement == pytest.approx(2 / 3)
    assert c.votes == {1: "high", 2: "low", 3: "high"}
    c = decide(emotion_votes(1, "awe", "fear", "awe", "awe", "anger"), "emotion")
    assert (c.state, c.label) == ("agreed", "awe")
    assert c.soft == pytest.approx({"awe": 0.6, "fear": 0.2, "anger": 0.2})
    assert c.agreement == pytest.approx(0.6)


def test_disputed_on_a_tie():
    votes = aesthetic_votes(1, "high", "low", "low", "high")
    c = decide(votes)
    assert (c.state, c.label) == ("disputed", None)
    assert c.soft == {"high": 0.5, "low": 0.5}
    assert c.agreement == 0.5
    c = decide(votes, tie_break="soft")      # a tie trains on the split
    assert c.state == "agreed"
    assert c.label == "high"                 # the first tied class in config order
    assert c.soft == {"high": 0.5, "low": 0.5}


def test_disputed_on_a_low_share():
    votes = emotion_votes(1, "awe", "awe", "fear", "anger", "sadness")   # top share 0.4
    assert decide(votes, "emotion").state == "disputed"
    assert decide(votes, "emotion", min_agreement=0.4).state == "agreed"
    assert decide(votes, "emotion", min_agreement=0.4).label == "awe"
    assert decide(votes, "emotion", min_agreement=0.41).state == "disputed"
    # soft tie-break does not rescue a tie below min_agreement
    three_way = emotion_votes(1, "awe", "fear", "anger")
    assert decide(three_way, "emotion", tie_break="soft").state == "disputed"
    assert decide(three_way, "emotion", tie_break="soft", min_agreement=0.3).state == "agreed"


def test_min_agreement_boundary():
    votes = aesthetic_votes(1, "high", "high", "low")
    assert decide(votes, min_agreement=2 / 3).state == "agreed"
    assert decide(votes, min_agreement=0.67).state == "disputed"
    assert decide(aesthetic_votes(1, "high", "high", "high"), min_agreement=1.0).state == "agreed"


def test_latest_vote_per_annotator_and_non_votes():
    votes = [vote(1, 1, "low", at=1), vote(1, 1, "high", at=5), vote(1, 2, "high", at=2),
             vote(1, 3, "low", at=3),
             Vote(annotation=999, task=1, annotator=4, updated_at="2026-11-27T12:00:09Z",
                  labels={"aesthetic": None, "emotion": None}, cancelled=True)]
    c = decide(votes)
    assert c.votes == {1: "high", 2: "high", 3: "low"}
    assert (c.state, c.label) == ("agreed", "high")


def test_skips_are_not_votes_and_do_not_hide_a_vote():
    skip = Vote(annotation=990, task=1, annotator=1, updated_at="2026-11-27T12:00:30Z",
                labels={"aesthetic": None, "emotion": None}, cancelled=True)
    cancelled_with_choice = Vote(annotation=991, task=1, annotator=4, updated_at="2026-11-27T12:00:31Z",
                                 labels={"aesthetic": "low", "emotion": "fear"}, cancelled=True)
    assert not skip.is_vote() and not cancelled_with_choice.is_vote()
    votes = aesthetic_votes(1, "high", "high", "high") + [skip, cancelled_with_choice]
    c = decide(votes)
    # annotator 1 skipped after voting: the vote stands; annotator 4's cancelled choice is no vote
    assert c.votes == {1: "high", 2: "high", 3: "high"}
    assert (c.state, c.soft) == ("agreed", {"high": 1.0})
    assert decide([skip, cancelled_with_choice], task=1).state == "no_votes"


def test_ground_truth_decides():
    votes = aesthetic_votes(1, "high", "high", "high") + [vote(1, 9, "low", ground_truth=True)]
    c = decide(votes)
    assert (c.state, c.label, c.soft) == ("agreed", "low", {"low": 1.0})
    c = decide([vote(1, 9, "low", ground_truth=True)])
    assert (c.state, c.label) == ("agreed", "low")


@pytest.mark.parametrize("fields, word", [
    ({"method": "mode"}, "method"),
    ({"min_annotators": 0}, "min_annotators"),
    ({"min_annotators": 2.5}, "min_annotators"),
    ({"min_annotators": True}, "min_annotators"),
    ({"min_agreement": 1.5}, "min_agreement"),
    ({"min_agreement": -0.1}, "min_agreement"),
    ({"min_agreement": float("nan")}, "min_agreement"),
    ({"min_agreement": "0.5"}, "min_agreement"),
    ({"tie_break": "coin"}, "tie_break"),
    ({"min_annotators": 10 ** 30}, "min_annotators must be an integer in 1..100"),
    ({"min_annotators": 101}, "min_annotators must be an integer in 1..100"),
    ({"min_agreement": float("inf")}, r"min_agreement must be a finite number in \[0, 1\]"),
    ({"min_agreement": 10 ** 400}, r"min_agreement must be a finite number in \[0, 1\]"),
    ({"count_fast_agreement": "false"}, "count_fast_agreement must be true or false"),
    ({"count_fast_agreement": 1}, "count_fast_agreement must be true or false"),
    ({"rubber_stamp_seconds": -1}, r"rubber_stamp_seconds must be a finite number in \[0, 3600\]"),
    ({"rubber_stamp_seconds": "3"}, "rubber_stamp_seconds"),
])
def test_policy_validation(fields, word):
    with pytest.raises(ValueError, match=word):
        Policy(**fields)


def test_policy_defaults_and_round_trip():
    policy = Policy(method="dawid_skene", min_annotators=2, min_agreement=0.6, tie_break="soft")
    assert Policy(**policy.to_dict()) == policy
    assert Policy().to_dict() == {"method": "majority", "min_annotators": 3, "min_agreement": 0.5,
                                  "tie_break": "unresolved", "count_fast_agreement": False,
                                  "rubber_stamp_seconds": 3.0}


# ----- per-project policy through the endpoint -----------------------------------------------------

def _post(client, body):
    return client.post("/webhook", data=json.dumps(body), content_type="application/json")


def _put(client, project, body):
    return client.put(f"/projects/{project}/consensus/policy", data=json.dumps(body), content_type="application/json")


def _annotation(ann, task, user, aesthetic):
    body = json.loads(json.dumps(example("webhook_ANNOTATION_CREATED.json")))
    body["annotation"].update(id=ann, task=task, completed_by=user, updated_at=f"2026-11-27T12:00:{ann:02d}Z")
    body["annotation"]["result"] = body["annotation"]["result"][:1]
    body["annotation"]["result"][0]["value"]["choices"] = [aesthetic]
    body["task"]["id"] = task
    return body


def test_policy_per_project_via_endpoint(settings, redis_client):
    client = create_app(settings).test_client()
    assert _put(client, 1, {"min_annotators": 2}).status_code == 404     # project never seen
    for ann, user in ((1, 2), (2, 3)):
        assert _post(client, _annotation(ann, 1, user, "high")).status_code == 200
    other = json.loads(json.dumps(example("webhook_PROJECT_UPDATED.json")))
    other["project"]["id"] = 2
    assert _post(client, other).status_code == 200                          # project 2 learned too

    def state(project=1):
        return client.get(f"/projects/{project}/consensus").get_json()["aesthetic"]["tasks"]

    assert state()["waiting"] == 1                                          # default min_annotators 3
    response = _put(client, 1, {"min_annotators": 2, "tie_break": "soft"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["policy"] == {"method": "majority", "min_annotators": 2, "min_agreement": 0.5,
                                             "tie_break": "soft", "count_fast_agreement": False,
                                             "rubber_stamp_seconds": settings.rubber_stamp_seconds}
    assert state()["agreed"] == 1
    assert client.get("/projects/1/consensus").get_json()["policy"]["min_annotators"] == 2
    assert client.get("/projects/2/consensus").get_json()["policy"]["min_annotators"] == 3   # per project
    # a later change keeps the earlier fields
    assert _put(client, 1, {"min_agreement": 0.75}).get_json()["policy"]["min_annotators"] == 2

    for bad, word in (({"min_annotatorz": 2}, "min_annotatorz"), ({"min_annotators": 0}, "min_annotators"),
                      ({"method": "vote"}, "method"), ({"min_agreement": "0.5"}, "min_agreement"),
                      ([1, 2], "object")):
        response = _put(client, 1, bad)
        assert response.status_code == 400, (bad, response.get_data(as_text=True))
        assert word in response.get_json()["error"]
    # nothing bad was stored: the consensus still answers with the last good policy
    response = client.get("/projects/1/consensus")
    assert response.status_code == 200
    assert response.get_json()["policy"] == {"method": "majority", "min_annotators": 2, "min_agreement": 0.75,
                                             "tie_break": "soft", "count_fast_agreement": False,
                                             "rubber_stamp_seconds": settings.rubber_stamp_seconds}
    assert _post(client, _annotation(3, 2, 4, "low")).status_code == 200


def test_policy_numbers_are_bounded_via_endpoint(settings, redis_client):
    client = create_app(settings).test_client()
    assert _post(client, _annotation(1, 1, 2, "high")).status_code == 200
    for raw, words in (('{"min_annotators": 1' + "0" * 30 + '}', ["min_annotators", "1..100"]),
                       ('{"min_annotators": 101}', ["min_annotators", "1..100"]),
                       ('{"min_agreement": 1e400}', ["min_agreement", "[0, 1]"]),
                       ('{"min_agreement": NaN}', ["min_agreement", "[0, 1]"]),
                       ('{"min_agreement": 1' + "0" * 400 + '}', ["min_agreement", "[0, 1]"])):
        response = client.put("/projects/1/consensus/policy", data=raw, content_type="application/json")
        assert response.status_code == 400, (raw[:40], response.get_data(as_text=True)[:300])
        assert all(word in response.get_json()["error"] for word in words), response.get_json()
    assert _put(client, 1, {"min_annotators": 100, "min_agreement": 1}).status_code == 200


def test_a_stored_policy_out_of_bounds_falls_back_to_the_defaults(settings, redis_client, caplog):
    client = create_app(settings).test_client()
    assert _post(client, _annotation(1, 1, 2, "high")).status_code == 200
    # written before the bounds existed
    redis_client.set(keys.policy("1"), json.dumps({"method": "majority", "min_annotators": 10 ** 30,
                                                  "min_agreement": 0.5, "tie_break": "unresolved"}))
    response = client.get("/projects/1/consensus")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["policy"]["min_annotators"] == settings.consensus_min_annotators
    assert "stored consensus policy ignored" in caplog.text
    assert _put(client, 1, {"min_annotators": 2}).get_json()["policy"]["min_annotators"] == 2


# ----- Dawid-Skene ---------------------------------------------------------------------------------

def crowd(seed: int, n_tasks: int, classes: tuple[str, ...], accuracy: dict[int, float], dimension: str):
    """Tasks with known true labels; good annotators answer right with `accuracy`, wrong
    uniformly over the other classes; annotator 4 answers at random, annotator 5 always the first
    class."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    truth = rng.integers(0, k, n_tasks)
    votes = []
    for task in range(n_tasks):
        for annotator in (1, 2, 3, 4, 5):
            if annotator in accuracy:
                right = rng.random() < accuracy[annotator]
                label = truth[task] if right else rng.choice([c for c in range(k) if c != truth[task]])
            elif annotator == 4:
                label = rng.integers(0, k)
            else:
                label = 0
            votes.append(vote(task, annotator, **{dimension: classes[int(label)]}))
    return votes, [classes[int(t)] for t in truth]


def accuracy_of(votes, truth, dimension, method):
    # label every task: min_annotators 1, any share, ties split
    policy = Policy(method=method, min_annotators=1, min_agreement=0.0, tie_break="soft")
    result = compute(votes, CLASSES, policy)[dimension]
    assert all(c.state == "agreed" for c in result.values())
    return float(np.mean([result[t].label == truth[t] for t in range(len(truth))])), result


def test_dawid_skene_beats_majority_with_spammers():
    votes, truth = crowd(2026, 400, EMOTION, {1: 0.9, 2: 0.85, 3: 0.88}, "emotion")
    majority, _ = accuracy_of(votes, truth, "emotion", "majority")
    ds, result = accuracy_of(votes, truth, "emotion", "dawid_skene")
    # majority ties fall on the first class, the always-"amusement" spammer's: about 0.89
    assert ds >= 0.95, (ds, majority)
    assert ds > majority + 0.03, (ds, majority)
    for c in result.values():
        assert sum(c.soft.values()) == pytest.approx(1.0)
        assert all(0.0 <= p <= 1.0 for p in c.soft.values())


def test_dawid_skene_beats_majority_on_two_classes():
    votes, truth = crowd(7, 400, AESTHETIC, {1: 0.9, 2: 0.85, 3: 0.88}, "aesthetic")
    majority, _ = accuracy_of(votes, truth, "aesthetic", "majority")
    ds, result = accuracy_of(votes, truth, "aesthetic", "dawid_skene")
    assert ds >= 0.93 and ds > majority, (ds, majority)
    for c in result.values():
        assert sum(c.soft.values()) == pytest.approx(1.0)


def test_dawid_skene_outvotes_an_always_high_spammer():
    """Annotators 1-3 are always right on tasks 0-9 (5 high, 5 low); 8 and 9 always say "high".
    On task 10, annotator 1 says low and 8, 9 say high. Majority: high, 2 to 1. Dawid-Skene has
    learned that 8's and 9's "high" is as likely for a low task as for a high one, and that 1 is
    right: low."""
    truth = ["high", "low"] * 5
    votes = [vote(t, a, truth[t]) for t in range(10) for a in (1, 2, 3)]
    votes += [vote(t, a, "high") for t in range(11) for a in (8, 9)]
    votes += [vote(10, 1, "low")]
    majority = compute(votes, CLASSES, Policy(method="majority"))["aesthetic"]
    ds = compute(votes, CLASSES, Policy(method="dawid_skene"))["aesthetic"]
    assert (majority[10].state, majority[10].label) == ("agreed", "high")
    assert (ds[10].state, ds[10].label) == ("agreed", "low")
    assert ds[10].soft["low"] > 0.99
    assert ds[10].agreement == pytest.approx(1 / 3)        # the vote share behind the label
    assert [ds[t].label for t in range(10)] == truth
    for c in ds.values():
        assert sum(c.soft.values()) == pytest.approx(1.0)


def _plain_dawid_skene(votes, dimension, names, steps=3000):
    """Textbook EM for Dawid-Skene, loops and np.add.at, started from majority vote and run to
    convergence: the reference the vectorised, accelerated one must reach."""
    rows = [(v.task, v.annotator, names.index(v.labels[dimension])) for v in votes]
    tasks, annotators = sorted({r[0] for r in rows}), sorted({r[1] for r in rows})
    t = np.array([tasks.index(r[0]) for r in rows])
    a = np.array([annotators.index(r[1]) for r in rows])
    obs = np.array([r[2] for r in rows])
    k = len(names)
    post = np.zeros((len(tasks), k))
    np.add.at(post, (t, obs), 1.0)
    post /= post.sum(axis=1, keepdims=True)
    for _ in range(steps):
        prior = post.mean(axis=0) + 1e-9
        confusion = np.full((len(annotators), k, k), 0.01)          # annotator, true, observed
        for j in range(k):
            np.add.at(confusion[:, j, :], (a, obs), post[t, j])
        confusion /= confusion.sum(axis=2, keepdims=True)
        log_post = np.tile(np.log(prior / prior.sum()), (len(tasks), 1))
        for j in range(k):
            np.add.at(log_post[:, j], t, np.log(confusion[a, j, obs]))
        new = np.exp(log_post - log_post.max(axis=1, keepdims=True))
        new /= new.sum(axis=1, keepdims=True)
        done = np.abs(new - post).max() < 1e-10
        post = new
        if done:
            break
    return {task: post[i] for i, task in enumerate(tasks)}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dawid_skene_reaches_plain_em_fixed_point(seed):
    """8 classes, annotators of mixed skill and a spammer: plain EM needs hundreds of steps
    here; the accelerated EM must end on the same posteriors (so the same labels and states)."""
    rng = np.random.default_rng(seed)
    accuracy = {1: 0.8, 2: 0.6, 3: 0.45}
    votes, _ = crowd(seed, 150, EMOTION, accuracy, "emotion")
    votes += [vote(t, 6, emotion=EMOTION[int(rng.integers(0, 3))]) for t in range(0, 150, 2)]  # a biased one
    reference = _plain_dawid_skene(votes, "emotion", EMOTION)
    policy = Policy(method="dawid_skene", min_annotators=1, min_agreement=0.5)
    result = compute(votes, CLASSES, policy)["emotion"]
    assert set(result) == set(reference)
    for task, expected in reference.items():
        got = np.array([result[task].soft.get(n, 0.0) for n in EMOTION])
        assert got == pytest.approx(expected, abs=1e-5), task
        assert result[task].state == ("agreed" if expected.max() >= 0.5 else "disputed")
        if result[task].state == "agreed":
            assert result[task].label == EMOTION[int(expected.argmax())]


def test_dawid_skene_keeps_states_and_ground_truth():
    votes = aesthetic_votes(1, "high", "high") + [vote(2, 1, "low", ground_truth=True)]
    result = compute(votes, CLASSES, Policy(method="dawid_skene"), tasks=[3])["aesthetic"]
    assert result[1].state == "waiting"
    assert (result[2].state, result[2].label) == ("agreed", "low")
    assert result[3].state == "no_votes"


# ----- Krippendorff's alpha ----------------------------------------------------------------------------

def test_alpha_perfect_agreement():
    assert krippendorff_alpha([["high", "high", "high"], ["low", "low"], ["awe", "awe"]]) == 1.0
    assert krippendorff_alpha([["high"], []]) is None       # nothing pairable


def test_alpha_krippendorff_2011_nominal_example():
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers,
    12 units, missing values; nominal alpha = 0.743."""
    A = [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None]
    B = [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3]
    C = [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None]
    D = [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]
    units = [[str(coder[u]) for coder in (A, B, C, D) if coder[u] is not None] for u in range(12)]
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=0.001)
    # the paper's hand computation: n = 40 pairable values, 32 of them on the coincidence matrix's
    # diagonal, value counts 9, 13, 10, 5, 3: alpha = 1 - (n-1)(n - 32) / (n^2 - sum n_c^2) = 113/152
    assert krippendorff_alpha(units) == pytest.approx(1 - 39 * (40 - 32) / (40 ** 2 - (81 + 169 + 100 + 25 + 9)))
    assert krippendorff_alpha(units) == pytest.approx(113 / 152)


def test_alpha_systematic_disagreement_is_negative():
    assert krippendorff_alpha([["high", "low"], ["low", "high"], ["high", "low"]]) < 0


# ----- summary -----------------------------------------------------------------------------------------

def test_summary_counts_labels_and_annotator_agreement():
    votes = (aesthetic_votes(1, "high", "high", "high")         # agreed high
             + aesthetic_votes(2, "low", "low", "high")         # agreed low; annotator 3 off
             + aesthetic_votes(3, "high", "low", "high", "low")  # tie: disputed
             + aesthetic_votes(4, "low"))                        # waiting
    result = compute(votes, CLASSES, Policy(), tasks=[5])
    out = summary(result, CLASSES)
    aesthetic = out["aesthetic"]
    assert aesthetic["tasks"] == {"no_votes": 1, "waiting": 1, "agreed": 2, "disputed": 1}
    assert aesthetic["labels"] == {"high": 1, "low": 1}
    assert aesthetic["annotators"] == {
        "1": {"votes_on_agreed_tasks": 2, "agreement": 1.0},
        "2": {"votes_on_agreed_tasks": 2, "agreement": 1.0},
        "3": {"votes_on_agreed_tasks": 2, "agreement": 0.5},
    }
    expected = krippendorff_alpha([["high"] * 3, ["low", "low", "high"], ["high", "low", "high", "low"], ["low"]])
    assert aesthetic["krippendorff_alpha"] == pytest.approx(expected)
    assert out["emotion"]["tasks"] == {"no_votes": 5, "waiting": 0, "agreed": 0, "disputed": 0}
    assert out["emotion"]["labels"] == dict.fromkeys(EMOTION, 0)
    assert out["emotion"]["krippendorff_alpha"] is None


# ----- snapshot -----------------------------------------------------------------------------------------

@pytest.fixture
def project_consensus(settings, redis_client):
    return ProjectConsensus(redis_client, settings)


@pytest.fixture
def labels():
    return parse_label_config(example("webhook_ANNOTATION_CREATED.json")["project"]["label_config"])


def url(task):
    return f"http://127.0.0.1:8099/images/img{task}.png"


def fill(pc: ProjectConsensus, votes, images: dict):
    for v in votes:
        pc.votes.apply("1", v, images.get(v.task))


SNAPSHOT_VOTES = (
    [vote(1, a, "high", "awe") for a in (1, 2, 3)]                       # both agreed
    + [vote(2, 1, "low", "awe"), vote(2, 2, "low", "fear"), vote(2, 3, "high", "anger")]  # aesthetic only
    + [vote(3, 1, "high", "awe")]                                         # waiting: no row
    + [vote(4, a, "low", "sadness") for a in (1, 2, 3)]                  # agreed, but no image: no row
    + [vote(5, a, "low", None) for a in (1, 2, 3)]                        # agreed aesthetic, no emotion votes
    + [vote(6, 1, "high", "fear"), vote(6, 2, "low", "fear"), vote(6, 3, "high", "awe"),
       vote(6, 4, "low", "awe")]                                          # both disputed: no row
)
SNAPSHOT_IMAGES = {1: url(1), 2: url(2), 3: url(3), 5: url(5), 6: url(6)}


def test_snapshot_rows(project_consensus, labels):
    fill(project_consensus, SNAPSHOT_VOTES, SNAPSHOT_IMAGES)
    snap = project_consensus.snapshot("1", labels)
    lines = [json.loads(line) for line in Path(snap["path"]).read_text().splitlines()]
    header, rows = lines[0], lines[1:]
    assert header["classes"] == {"aesthetic": list(AESTHETIC), "emotion": list(EMOTION)}
    assert header["project"] == "1" and header["policy"]["method"] == "majority"
    assert snap["rows"] == len(rows) == 3
    assert rows == [
        {"task": 1, "image": url(1), "aesthetic": {"high": 1.0}, "emotion": {"awe": 1.0}},
        {"task": 2, "image": url(2), "aesthetic": pytest.approx({"low": 2 / 3, "high": 1 / 3}), "emotion": None},
        {"task": 5, "image": url(5), "aesthetic": {"low": 1.0}, "emotion": None},
    ]


def test_snapshot_same_votes_same_file(project_consensus, labels, redis_client):
    fill(project_consensus, SNAPSHOT_VOTES, SNAPSHOT_IMAGES)
    first = project_consensus.snapshot("1", labels)
    path = Path(first["path"])
    stat, text = path.stat(), path.read_text()
    second = project_consensus.snapshot("1", labels)
    assert (second["id"], second["sha256"], second["path"]) == (first["id"], first["sha256"], first["path"])
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_ino == stat.st_ino
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first["sha256"]
    assert first["id"] == first["sha256"][:16] and path.name == f"{first['id']}.jsonl"

    # the same votes stored afresh (another order): the same snapshot
    redis_client.flushdb()
    fill(project_consensus, list(reversed(SNAPSHOT_VOTES)), SNAPSHOT_IMAGES)
    assert project_consensus.snapshot("1", labels)["sha256"] == first["sha256"]

    # a new vote: a new file, the old one untouched
    project_consensus.votes.apply("1", vote(3, 2, "high", "awe"), url(3))
    project_consensus.votes.apply("1", vote(3, 3, "high", "awe"), url(3))
    third = project_consensus.snapshot("1", labels)
    assert third["id"] != first["id"] and third["rows"] == 4
    assert path.read_text() == text and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, Path(third["path"]).name])


def test_snapshot_is_a_training_manifest(project_consensus, labels, tmp_path):
    fill(project_consensus, SNAPSHOT_VOTES, SNAPSHOT_IMAGES)
    snap = project_consensus.snapshot("1", labels)
    # what the training job does: download each URL, point the row at the local file
    local = tmp_path / "train"
    local.mkdir()
    lines = Path(snap["path"]).read_text().splitlines()
    out = [lines[0]]
    colours = {}
    for line in lines[1:]:
        row = json.loads(line)
        name = f"task{row['task']}.png"
        colours[row["task"]] = (40 * row["task"], 100, 200)
        Image.new("RGB", (24, 16), colours[row["task"]]).save(local / name)
        row["image"] = name                              # relative to the manifest's folder
        out.append(json.dumps(row))
    manifest_path = local / "manifest.jsonl"
    manifest_path.write_text("\n".join(out) + "\n")

    manifest = read_manifest(manifest_path)
    assert manifest.classes == CLASSES
    assert [r.image for r in manifest.rows] == [local / "task1.png", local / "task2.png", local / "task5.png"]
    first, second, third = manifest.rows
    assert first.targets["aesthetic"].tolist() == [1.0, 0.0]
    assert first.targets["emotion"].tolist() == [0.0, 1.0] + [0.0] * 6
    assert second.targets["aesthetic"].tolist() == pytest.approx([1 / 3, 2 / 3])
    assert second.targets["emotion"] is None and third.targets["emotion"] is None
    data, skipped = load_training_data(manifest, size=32, strict=True)
    assert skipped == [] and len(data) == 3
    assert data.masks["emotion"].tolist() == [1.0, 0.0, 0.0]


# ----- size ---------------------------------------------------------------------------------------------

def test_compute_on_twenty_thousand_tasks_finishes():
    """A sanity run, not a timed assertion: 20,000 tasks x 3 annotators through compute()."""
    rng = np.random.default_rng(0)
    n = 20_000
    a = rng.integers(0, 2, (n, 3))
    e = rng.integers(0, 8, (n, 3))
    votes = [Vote(annotation=t * 3 + j, task=t, annotator=j + 1, updated_at="2026-11-27T12:00:00Z",
                  labels={"aesthetic": AESTHETIC[a[t, j]], "emotion": EMOTION[e[t, j]]})
             for t in range(n) for j in range(3)]
    started = time.perf_counter()
    result = compute(votes, CLASSES, Policy())
    elapsed = time.perf_counter() - started
    assert len(result["aesthetic"]) == len(result["emotion"]) == n
    assert all(c.state == "agreed" for c in result["aesthetic"].values())   # 3 votes, 2 classes: no tie
    counts = summary(result, CLASSES)
    assert sum(counts["emotion"]["tasks"].values()) == n
    print(f"compute() on {n} tasks x 3 annotators: {elapsed:.1f} s")
