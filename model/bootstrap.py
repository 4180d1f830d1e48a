"""Bootstrap confidence intervals over held-out tasks, for one version and for the paired
difference of two versions scored on the same tasks. numpy only, seeded, so a report and a
promotion note are the same every time they are computed.

A resample is a vector of counts (how often each held-out task was drawn); a confusion matrix
per resample is then one einsum, so 1000 resamples of a few hundred tasks take milliseconds.
Accuracy and macro-F1 depend on the (truth, predicted) pairs only, so a stored confusion matrix
is enough to bootstrap a version's metrics after the fact.
"""
from __future__ import annotations

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n): how many times each of n tasks is drawn in each resample of size n."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes)[np.asarray(labels, dtype=int)]


def confusions(truth: np.ndarray, predicted: np.ndarray, num_classes: int, counts: np.ndarray) -> np.ndarray:
    """(resamples, C, C): each resample's confusion matrix, rows = truth."""
    return np.einsum("bn,nc,nd->bcd", counts, _one_hot(truth, num_classes), _one_hot(predicted, num_classes))


def accuracies(matrices: np.ndarray) -> np.ndarray:
    totals = matrices.sum(axis=(1, 2))
    return np.divide(np.trace(matrices, axis1=1, axis2=2), totals, out=np.zeros(len(matrices)), where=totals > 0)


def macro_f1s(matrices: np.ndarray) -> np.ndarray:
    """model.metrics.macro_f1 of every matrix at once: mean F1 over the classes present."""
    tp = np.diagonal(matrices, axis1=1, axis2=2)
    either = matrices.sum(axis=1) + matrices.sum(axis=2)
    f1 = np.divide(2 * tp, either, out=np.zeros_like(tp, dtype=float), where=either > 0)
    present = either > 0
    kinds = present.sum(axis=1)
    return np.divide((f1 * present).sum(axis=1), kinds, out=np.zeros(len(matrices)), where=kinds > 0)


def interval(values: np.ndarray, level: float = LEVEL) -> list[float]:
    """The percentile interval: [low, high] holding `level` of the resampled values."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def pairs_of(confusion: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The (truth, predicted) pairs a confusion matrix counts, one per task."""
    matrix = np.asarray(confusion, dtype=int)
    truth, predicted = np.nonzero(matrix)
    times = matrix[truth, predicted]
    return np.repeat(truth, times), np.repeat(predicted, times)


def metric_intervals(confusion: list[list[int]], resamples: int = RESAMPLES, seed: int = SEED,
                     level: float = LEVEL) -> dict | None:
    """Bootstrap intervals of accuracy and macro-F1 from a confusion matrix; None without tasks."""
    truth, predicted = pairs_of(confusion)
    if len(truth) == 0:
        return None
    matrices = confusions(truth, predicted, len(confusion), resample_counts(len(truth), resamples, seed))
    return {"accuracy": interval(accuracies(matrices), level), "macro_f1": interval(macro_f1s(matrices), level),
            "level": level, "resamples": resamples, "n": int(len(truth))}


def with_intervals(metrics: dict) -> dict:
    """A version's per-task metrics, each with its "ci" added (tasks without a confusion unchanged)."""
    return {task: m if not (m and m.get("confusion")) else {**m, "ci": metric_intervals(m["confusion"])}
            for task, m in (metrics or {}).items()}


def mean_macro_f1(truth: dict, predicted: dict, classes: dict, counts: np.ndarray) -> np.ndarray:
    """Per resample, the mean over task types of macro-F1 (the selection score), each task type
    scored on the held-out tasks labelled for it. `truth[t]` is -1 where a task is unlabelled."""
    scores = []
    for task, labels in truth.items():
        labelled = labels >= 0
        if labelled.any():
            matrices = confusions(labels[labelled], predicted[task][labelled], classes[task], counts[:, labelled])
            scores.append(macro_f1s(matrices))
    return np.mean(scores, axis=0)


def paired_difference(truth: dict, candidate: dict, current: dict, classes: dict, resamples: int = RESAMPLES,
                      seed: int = SEED, level: float = LEVEL) -> dict:
    """Candidate minus current on the same held-out tasks, both resampled with the same draws
    (paired), so the interval is of the difference itself, not of two independent scores."""
    n = len(next(iter(truth.values())))
    everything = np.ones((1, n))
    counts = resample_counts(n, resamples, seed)
    differences = mean_macro_f1(truth, candidate, classes, counts) - mean_macro_f1(truth, current, classes, counts)
    return {"candidate": float(mean_macro_f1(truth, candidate, classes, everything)[0]),
            "current": float(mean_macro_f1(truth, current, classes, everything)[0]),
            "difference_ci": interval(differences, level), "n": n, "level": level, "resamples": resamples}
