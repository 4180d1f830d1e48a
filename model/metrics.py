"""Per-task accuracy, macro-F1 and confusion matrix on the labelled samples of a split."""
from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the truth or the predictions (sklearn's default)."""
    tp = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    present = (predicted + actual) > 0
    if not present.any():
        return 0.0
    f1 = np.divide(2 * tp, predicted + actual, out=np.zeros_like(tp), where=(predicted + actual) > 0)
    return float(f1[present].mean())


def task_metrics(probabilities: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> dict | None:
    """None when no sample of the split is labelled for the task. A soft target counts as its
    most probable class."""
    keep = mask > 0
    if not bool(keep.any()):
        return None
    truth = targets[keep].argmax(dim=1).numpy()
    predicted = probabilities[keep].argmax(dim=1).numpy()
    matrix = confusion_matrix(truth, predicted, targets.shape[1])
    return {
        "n": int(keep.sum()),
        "accuracy": float((truth == predicted).mean()),
        "macro_f1": macro_f1(matrix),
        "confusion": matrix.tolist(),
    }


def selection_score(metrics: dict[str, dict | None]) -> float:
    """What early stopping and the best checkpoint follow: the mean macro-F1 of the tasks
    that have held-out labels."""
    values = [m["macro_f1"] for m in metrics.values() if m is not None]
    return float(np.mean(values)) if values else float("nan")
