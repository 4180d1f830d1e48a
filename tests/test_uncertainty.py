"""The prediction score Label Studio sorts by (ascending): each measure by hand, and the order it
gives tasks of known certainty."""
from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest

from backend.core.settings import load_settings
from backend.labelstudio.label_config import ProjectLabels
from model.uncertainty import MEASURES, certainty, entropy, least_confidence, margin

LABELS = ProjectLabels("img", "photo", "aesthetic", "emotion", ("high", "low"), ("joy", "calm", "fear"))


def test_least_confidence_is_the_top_probability():
    assert least_confidence([0.2, 0.7, 0.1]) == pytest.approx(0.7)


def test_margin_is_top_minus_runner_up():
    assert margin([0.2, 0.5, 0.3]) == pytest.approx(0.2)
    assert margin([0.5, 0.5]) == 0.0


def test_entropy_is_one_minus_normalised_entropy():
    assert entropy([0.5, 0.5]) == pytest.approx(0.0)
    assert entropy([1.0, 0.0, 0.0]) == pytest.approx(1.0)
    # H = -(0.9 ln 0.9 + 0.1 ln 0.1) = 0.325083; log 2 = 0.693147
    assert entropy([0.9, 0.1]) == pytest.approx(1 - 0.325083 / math.log(2), abs=1e-6)


@pytest.mark.parametrize("measure, expected", [
    ("least_confidence", 0.5),  # min(0.9, 0.5)
    ("margin", 0.2),            # min(0.9 - 0.1, 0.5 - 0.3)
    # aesthetic 1 - H(0.9, 0.1)/ln 2 = 0.531004; emotion H(0.5, 0.3, 0.2) = 1.029653 -> 1 - 1.029653/ln 3 = 0.062769
    ("entropy", 0.062769),
])
def test_task_certainty_is_its_less_certain_head(measure, expected):
    assert certainty(measure, [[0.9, 0.1], [0.5, 0.3, 0.2]]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("measure", sorted(MEASURES))
def test_ascending_score_puts_the_least_certain_first(measure):
    sure, torn, unsure = [[0.98, 0.02], [0.96, 0.02, 0.02]], [[0.7, 0.3], [0.6, 0.3, 0.1]], [[0.5, 0.5], [0.34, 0.33, 0.33]]
    scores = {name: certainty(measure, heads) for name, heads in
              {"sure": sure, "torn": torn, "unsure": unsure}.items()}
    assert sorted(scores, key=scores.get) == ["unsure", "torn", "sure"]


def test_setting_chooses_the_measure_and_names_the_choices(monkeypatch):
    monkeypatch.delenv("AESEMO_UNCERTAINTY", raising=False)
    assert load_settings().uncertainty == "least_confidence"
    monkeypatch.setenv("AESEMO_UNCERTAINTY", "entropy")
    assert load_settings().uncertainty == "entropy"
    monkeypatch.setenv("AESEMO_UNCERTAINTY", "variance")
    with pytest.raises(ValueError, match="AESEMO_UNCERTAINTY.*least_confidence, margin, entropy"):
        load_settings()


class FixedPredictor:
    """A Predictor's interface with fixed probabilities: the score, not the model, is under test."""
    classes = {"aesthetic": ["low", "high"], "emotion": ["fear", "joy", "calm"]}

    def predict_images(self, images, batch_size):
        return [{"aesthetic": [0.1, 0.9], "emotion": [0.2, 0.5, 0.3]} for _ in images]


@pytest.mark.torch
@pytest.mark.parametrize("measure, expected", [("least_confidence", 0.5), ("margin", 0.2), ("entropy", 0.062769)])
def test_predict_tasks_scores_with_the_chosen_measure(measure, expected):
    from backend.serving.predict import predict_tasks
    tasks = [{"id": 1, "data": {"photo": "http://x/1.png"}}]
    results, failures = predict_tasks(tasks, LABELS, FixedPredictor(), "v0001-x", lambda url: SimpleNamespace(),
                                      4, time.monotonic() + 60, measure)
    assert failures == [] and results[0]["score"] == pytest.approx(expected, abs=1e-6)
    assert [r["score"] for r in results[0]["result"]] == [0.9, 0.5]
