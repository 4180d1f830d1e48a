"""A prediction's `score`: how certain the model is about a task, over both heads.

Label Studio's Data Manager sorts by a task's prediction score ascending (column
`tasks:predictions_score`), so every measure here is a certainty: low means unsure, and the
least certain task comes first. A task is as certain as its less certain head (the minimum over
aesthetic and emotion): one head in doubt is enough to want a human label.

- `least_confidence`: the top class's probability (1/K for a uniform head, 1 for a sure one).
- `margin`: the top probability minus the runner-up's (0 when two classes tie).
- `entropy`: 1 - H(p) / log K, the normalised entropy turned round so that a uniform head
  (the most uncertain) scores 0 and a one-hot head scores 1.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Probabilities = Sequence[float]


def least_confidence(probs: Probabilities) -> float:
    return max(probs)


def margin(probs: Probabilities) -> float:
    top, runner_up = sorted(probs, reverse=True)[:2]
    return top - runner_up


def entropy(probs: Probabilities) -> float:
    spread = -sum(p * math.log(p) for p in probs if p > 0)
    return 1.0 - spread / math.log(len(probs))


MEASURES: dict[str, Callable[[Probabilities], float]] = {
    "least_confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
}


def certainty(measure: str, heads: Sequence[Probabilities]) -> float:
    """The task's score under `measure`: its least certain head's. KeyError for an unknown measure
    (the setting's check names the choices at startup)."""
    return float(min(MEASURES[measure](probs) for probs in heads))
