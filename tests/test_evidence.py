"""Held-out evidence: the stable hashed held-out set, training on it (never on a
held-out task), every epoch kept to the end or epochs by cross-validation while it is small,
bootstrap intervals, and the
like-for-like promotion rule with its notes (backend/training/promotion.py)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from backend.training.promotion import by_evidence, heldout_tasks, like_for_like, promotion
from model.bootstrap import metric_intervals, paired_difference
from model.crossval import CrossValidation
from model.heldout import HELDOUT_SPLIT, held_out, mark_held_out, named_split
from model.manifest import read_manifest
from model.network import NetConfig
from model.pipeline import train_version
from model.synthetic import write_synthetic_set
from model.train import TrainConfig

from training_project import AESTHETIC, EMOTION, write_small_version

SMALL = {"train_size": 40, "crop_size": 35}
TINY_NET = NetConfig(backbone="resnet18", num_groups=2, fc_width=64)


# ----- the stable held-out set ------------------------------------------------------------------

def test_the_hash_split_is_stable_and_only_grows():
    first = mark_held_out([{"task": t} for t in range(1, 401)], "7", 0.2)
    more = mark_held_out([{"task": t} for t in range(1, 1001)], "7", 0.2)
    held = {r["task"] for r in first if r.get("split") == HELDOUT_SPLIT}
    assert held == {r["task"] for r in more[:400] if r.get("split") == HELDOUT_SPLIT}  # adding tasks moves none
    assert 0.14 < len(held) / 400 < 0.26
    wider = {t for t in range(1, 401) if held_out("7", t, 0.3)}
    assert held < wider  # raising the fraction only adds tasks
    assert {t for t in range(1, 401) if held_out("8", t, 0.2)} != held  # each project has its own


def test_named_split_keeps_held_out_rows_out_of_training(tmp_path):
    manifest = write_synthetic_set(tmp_path, 30, seed=2, size=48)
    marked(manifest, "3")
    rows = read_manifest(manifest).rows
    training, heldout = named_split(rows, HELDOUT_SPLIT)
    assert all(rows[i].split == HELDOUT_SPLIT for i in heldout.tolist())
    assert not any(rows[i].split == HELDOUT_SPLIT for i in training.tolist())
    assert len(training) + len(heldout) == len(rows)
    assert named_split(rows, None) is None and named_split(rows, "no such split") is None


def marked(manifest, project: str) -> int:
    """Adds task ids and the project's held-out marks to a synthetic manifest; returns how many are held out."""
    lines = manifest.read_text().splitlines()
    rows = mark_held_out([{**json.loads(line), "task": n} for n, line in enumerate(lines[1:], start=1)],
                         project, 0.25)
    manifest.write_text("\n".join([lines[0]] + [json.dumps(r) for r in rows]) + "\n")
    return sum(1 for r in rows if r.get("split") == HELDOUT_SPLIT)


# ----- training on the named split, epochs by cross-validation ----------------------------------

@pytest.fixture(scope="module")
def cross_validated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    manifest = write_synthetic_set(root / "images", 40, seed=4, size=48)
    heldout = marked(manifest, "5")
    meta = train_version(manifest, root / "version", TINY_NET,
                         TrainConfig(epochs=3, lr=0.02, patience=0, heldout_split=HELDOUT_SPLIT, **SMALL),
                         use_pretrained=False, crossval=CrossValidation(min_heldout=30, folds=2, repeats=1))
    return meta, heldout


def test_training_holds_out_the_marked_rows(cross_validated):
    meta, heldout = cross_validated
    assert meta["training"]["val_size"] == heldout == meta["metrics"]["aesthetic"]["n"]
    assert meta["training"]["train_size"] == 40 - heldout


def test_cross_validation_chooses_the_epochs_and_reports_the_spread(cross_validated):
    meta, _ = cross_validated
    cv = meta["training"]["crossval"]
    assert cv["folds"] == 2 and cv["repeats"] == 1
    assert len(cv["best_epochs"]) == len(cv["epochs_run"]) == len(cv["scores"]) == 2
    assert 1 <= cv["epochs"] <= 3 and cv["epochs"] == meta["training"]["epochs_run"]
    assert cv["score_min"] <= cv["score_mean"] <= cv["score_max"] and cv["score_sd"] >= 0
    assert meta["training"]["best_epoch"] == meta["training"]["epochs_run"]  # the last epoch is kept
    assert "ci" in meta["metrics"]["aesthetic"]


def test_a_small_held_out_set_trains_every_epoch_on_every_training_row_and_keeps_the_last(tmp_path):
    """The job's default below AESEMO_MIN_HELDOUT: no folds, no epoch chosen on a handful of
    held-out tasks; the statement says why it did not stop early."""
    manifest = write_synthetic_set(tmp_path / "images", 40, seed=4, size=48)
    heldout = marked(manifest, "5")
    events = []
    meta = train_version(manifest, tmp_path / "version", TINY_NET,
                         TrainConfig(epochs=3, lr=0.02, patience=1, heldout_split=HELDOUT_SPLIT, **SMALL),
                         use_pretrained=False, crossval=CrossValidation(min_heldout=30), progress=events.append)
    training = meta["training"]
    assert training["crossval"] is None
    assert training["train_size"] == 40 - heldout and training["val_size"] == heldout
    assert training["epochs_run"] == training["best_epoch"] == 3 and training["stopped_early"] is False
    assert training["stopping"].startswith("ran all 3 epochs; kept the last: the held-out set (aesthetic ")
    assert training["stopping"].endswith("is under 30 per task type, too few to stop early on")
    assert events[-1] == {"stage": "stopped", "stopping": training["stopping"]}


def test_without_marks_or_with_a_large_held_out_set_no_cross_validation(tmp_path):
    manifest = write_synthetic_set(tmp_path / "images", 12, seed=5, size=48)
    meta = train_version(manifest, tmp_path / "v", TINY_NET, TrainConfig(epochs=1, heldout_split=HELDOUT_SPLIT, **SMALL),
                         use_pretrained=False, crossval=CrossValidation(min_heldout=30))
    assert meta["training"]["crossval"] is None and meta["training"]["val_size"] == 2  # the seeded random split
    heldout = marked(manifest, "5")
    meta = train_version(manifest, tmp_path / "w", TINY_NET, TrainConfig(epochs=1, heldout_split=HELDOUT_SPLIT, **SMALL),
                         use_pretrained=False, crossval=CrossValidation(min_heldout=1))
    assert meta["training"]["crossval"] is None and meta["training"]["val_size"] == heldout


# ----- bootstrap intervals ----------------------------------------------------------------------

def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_n():
    def confusion(scale):  # accuracy 0.75, macro-F1 0.75 at every scale
        return [[3 * scale, 1 * scale], [1 * scale, 3 * scale]]
    small, large = metric_intervals(confusion(5)), metric_intervals(confusion(50))
    for ci in (small, large):
        assert ci["accuracy"][0] <= 0.75 <= ci["accuracy"][1]
        assert ci["macro_f1"][0] <= 0.75 <= ci["macro_f1"][1]
    width = {name: [ci[name][1] - ci[name][0] for ci in (small, large)] for name in ("accuracy", "macro_f1")}
    assert width["accuracy"][1] < width["accuracy"][0] / 2 and width["macro_f1"][1] < width["macro_f1"][0] / 2
    assert metric_intervals(confusion(5)) == small  # seeded
    assert large["n"] == 400 and metric_intervals([[0, 0], [0, 0]]) is None


def test_paired_difference_is_on_the_same_tasks():
    rng = np.random.default_rng(1)
    truth = {"aesthetic": rng.integers(0, 2, 200), "emotion": rng.integers(0, 8, 200)}
    truth["emotion"][:50] = -1  # unlabelled for emotion
    same = paired_difference(truth, truth, truth, {"aesthetic": 2, "emotion": 8})
    assert same["difference_ci"] == [0.0, 0.0] and same["candidate"] == same["current"] == 1.0 and same["n"] == 200
    worse = {task: np.where(rng.random(200) < 0.4, (labels + 1) % 2, labels) for task, labels in truth.items()}
    better = paired_difference(truth, truth, worse, {"aesthetic": 2, "emotion": 8})
    low, high = better["difference_ci"]
    assert 0 < low <= better["candidate"] - better["current"] <= high


# ----- the promotion rule -----------------------------------------------------------------------

TRAINED = {"trained": True, "training": {"train_size": 40}}
GOOD = {"metrics": {"aesthetic": {"macro_f1": 0.7, "confusion": [[3, 1], [1, 3]]}}}


def evidence(candidate, current, ci, n=100, labelled=100):
    return {"candidate": candidate, "current": current, "difference_ci": ci, "n": n, "level": 0.95,
            "labelled": {"aesthetic": labelled, "emotion": 0}}


@pytest.mark.parametrize("case, train_size, promoted, words", [
    (evidence(0.8, 0.6, [0.1, 0.3]), 40, True, [
        "on the same 100 held-out tasks: macro-F1 0.8000 vs current 0.6000, difference +0.2000 "
        "(95% interval +0.1000 to +0.3000): better"]),
    (evidence(0.5, 0.7, [-0.3, -0.1]), 60, False, ["difference -0.2000", ": worse"]),
    (evidence(0.65, 0.6, [-0.05, 0.15]), 60, True, ["inconclusive; promoted: trained on more labels (60 vs 40)"]),
    (evidence(0.65, 0.6, [-0.05, 0.15]), 40, False, ["inconclusive; the current version stays", "(40 vs 40)"]),
    (evidence(0.9, 0.5, [0.2, 0.6], n=12, labelled=12), 60, True, [
        "rests on little evidence (labelled held-out tasks: aesthetic 12, under AESEMO_MIN_HELDOUT=30)",
        "trained on more labels"]),
    ({"candidate": 0.7, "n": 50, "labelled": {"aesthetic": 50}, "current_error": "VersionError: gone"}, 40, True,
     ["compared with nothing: the current version could not be scored (VersionError: gone)"]),
])
def test_promotion_on_like_for_like_evidence(settings, case, train_size, promoted, words):
    decision, why = by_evidence(settings, TRAINED, {**GOOD, "training": {"train_size": train_size}}, case)
    assert decision is promoted and all(word in why for word in words), why


def test_inconclusive_never_promotes_broken_outputs_and_the_setting_can_keep_the_current(settings):
    one_class = {"metrics": {"aesthetic": {"macro_f1": 0.3, "confusion": [[0, 4], [0, 4]]}},
                 "training": {"train_size": 90}}
    decision, why = by_evidence(settings, TRAINED, one_class, evidence(0.3, 0.3, [-0.1, 0.1]))
    assert decision is False and "answers one class for every held-out image" in why
    decision, why = by_evidence(settings, TRAINED, one_class, evidence(float("nan"), 0.3, [0, 0]))
    assert decision is False and "no finite score" in why
    keep = replace(settings, promotion_inconclusive="current")
    decision, why = by_evidence(keep, TRAINED, {**GOOD, "training": {"train_size": 90}},
                                evidence(0.65, 0.6, [-0.05, 0.15]))
    assert decision is False and "AESEMO_PROMOTION_INCONCLUSIVE=current" in why


def test_both_versions_are_scored_on_the_same_held_out_images(settings, tmp_path):
    manifest = write_synthetic_set(tmp_path / "images", 24, seed=6, size=48,
                                   classes={"aesthetic": AESTHETIC, "emotion": EMOTION})
    count = marked(manifest, "9")
    classes = {"aesthetic": AESTHETIC, "emotion": EMOTION}
    tasks = heldout_tasks(manifest, classes)
    assert len(tasks.images) == count > 0
    write_small_version(tmp_path / "candidate", seed=1)
    write_small_version(tmp_path / "current", seed=2)
    paired = like_for_like(tmp_path / "candidate", tmp_path / "current", tasks)
    assert paired["n"] == count and "current" in paired and len(paired["difference_ci"]) == 2
    itself = like_for_like(tmp_path / "candidate", tmp_path / "candidate", tasks)
    assert itself["difference_ci"] == [0.0, 0.0]
    # a current version that cannot be loaded: compared with nothing, never an error
    (tmp_path / "broken").mkdir()
    alone = like_for_like(tmp_path / "candidate", tmp_path / "broken", tasks)
    assert "current_error" in alone and alone["n"] == count
    decided, why = promotion(settings, TRAINED, {"metrics": {}, "training": {"train_size": 1}},
                             tmp_path / "candidate", alone)
    assert "compared with nothing" in why or "answers one class" in why or "scores 0" in why, why
