"""Evaluating a version folder on a manifest: per task accuracy, macro-F1, per-class recall,
expected calibration error, the confusion matrix and 95 % bootstrap intervals of accuracy and
macro-F1 (model/bootstrap.py), plus one confusion PNG per task.

`split` keeps the rows whose "split" field equals it. A manifest whose rows carry no split
field (one file per split, as some importers write) is evaluated whole, with a warning.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .classes import TASKS
from .bootstrap import metric_intervals
from .dataset import stack_targets
from .errors import ImageError, ManifestError
from .figures import confusion_png
from .images import open_image
from .manifest import Row, read_manifest
from .metrics import task_metrics
from .predictor import Predictor

log = logging.getLogger(__name__)

ECE_BINS = 15


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> float:
    """Guo et al. (2017): the confidence is the top probability; equal-width bins (lo, hi] over
    [0, 1]; the gap |accuracy - mean confidence| of each bin weighted by its share of samples."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == truth
    # a confidence of exactly 0 cannot occur (the top of a softmax is >= 1/C), so bin 0 is (0, 1/bins]
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / len(truth))


def class_recall(matrix: list[list[int]], classes: tuple[str, ...]) -> dict[str, float | None]:
    """Per true class the share predicted right; None for a class with no sample."""
    rows = np.asarray(matrix)
    actual = rows.sum(axis=1)
    return {name: (float(rows[i, i] / actual[i]) if actual[i] else None) for i, name in enumerate(classes)}


def evaluate_task(probabilities: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                  classes: tuple[str, ...]) -> dict | None:
    """task_metrics plus per-class recall and ECE; None when no row is labelled for the task."""
    metrics = task_metrics(probabilities, targets, mask)
    if metrics is None:
        return None
    keep = mask > 0
    truth = targets[keep].argmax(dim=1).numpy()
    metrics["recall"] = class_recall(metrics["confusion"], classes)
    metrics["ece"] = expected_calibration_error(probabilities[keep].numpy(), truth)
    metrics["ci"] = metric_intervals(metrics["confusion"])
    return metrics


def select_split(rows: list[Row], split: str | None, where: Path) -> list[Row]:
    if split is None:
        return rows
    named = sorted({row.split for row in rows if row.split is not None})
    if not named:
        log.warning("%s: no row carries a \"split\" field; evaluating all %d rows", where, len(rows))
        return rows
    chosen = [row for row in rows if row.split == split]
    if not chosen:
        raise ManifestError(f"{where}: no row of split {split!r} (splits present: {', '.join(named)})")
    return chosen


@dataclass
class Evaluation:
    metrics: dict[str, dict | None]
    classes: dict[str, tuple[str, ...]]
    images: int
    skipped: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"images": self.images, "skipped": self.skipped, "metrics": self.metrics,
                "classes": {task: list(names) for task, names in self.classes.items()}}


def _load(predictor: Predictor, row: Row) -> torch.Tensor | str:
    try:
        return predictor.prepare(open_image(row.image, max_pixels=predictor.max_pixels))
    except ImageError as exc:
        return str(exc)


def predict_rows(predictor: Predictor, rows: list[Row], where: Path, batch_size: int,
                 bar=None) -> tuple[list[Row], dict[str, torch.Tensor], list[str]]:
    """Decodes a batch on a few threads (Pillow releases the GIL) while keeping at most one
    batch of images in memory; unreadable images are skipped, one message each."""
    kept, skipped, chunks = [], [], {task: [] for task in TASKS}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(rows), batch_size):
            batch_rows = rows[start:start + batch_size]
            loaded = list(pool.map(lambda row: _load(predictor, row), batch_rows))
            tensors = []
            for row, item in zip(batch_rows, loaded):
                if isinstance(item, str):
                    skipped.append(f"{where}:{row.line}: skipped: {item}")
                    log.warning("%s", skipped[-1])
                else:
                    kept.append(row)
                    tensors.append(item)
            if tensors:
                for task, probs in predictor.predict_tensors(torch.stack(tensors)).items():
                    chunks[task].append(probs)
            if bar is not None:
                bar.update(len(batch_rows))
    if not kept:
        raise ManifestError(f"{where}: none of the {len(rows)} images could be read")
    return kept, {task: torch.cat(parts) for task, parts in chunks.items()}, skipped


def evaluate(predictor: Predictor, manifest_path: str | Path, split: str | None = None, batch_size: int = 32,
             show_bar: bool = False) -> Evaluation:
    manifest = read_manifest(manifest_path, classes={task: list(predictor.classes[task]) for task in TASKS})
    rows = select_split(manifest.rows, split, manifest.path)
    bar = None
    if show_bar:
        from tqdm import tqdm
        bar = tqdm(total=len(rows), unit="img", dynamic_ncols=True)
    try:
        kept, probabilities, skipped = predict_rows(predictor, rows, manifest.path, batch_size, bar)
    finally:
        if bar is not None:
            bar.close()
    targets, masks = stack_targets(kept, manifest.classes)
    metrics = {task: evaluate_task(probabilities[task], targets[task], masks[task], manifest.classes[task])
               for task in TASKS}
    return Evaluation(metrics=metrics, classes=manifest.classes, images=len(kept), skipped=skipped)


def write_confusion_pngs(evaluation: Evaluation, out: Path) -> list[str]:
    """One confusion_<task>.png per task that had labelled rows; returns the file names."""
    names = []
    for task, m in evaluation.metrics.items():
        if m is None:
            continue
        name = f"confusion_{task}.png"
        confusion_png(m["confusion"], list(evaluation.classes[task]),
                      f"{task}: accuracy {m['accuracy']:.2f}, macro-F1 {m['macro_f1']:.2f}, "
                      f"ECE {m['ece']:.3f} (n={m['n']})", out / name)
        names.append(name)
    return names


def _shown(interval: list[float]) -> str:
    return f"{interval[0]:.3f}-{interval[1]:.3f}"


def summary_table(evaluation: Evaluation) -> str:
    """A few lines for a terminal: one per task, then the recall of each class."""
    lines = [f"{'task':<10}{'n':>7}{'accuracy':>10}{'95% interval':>16}{'macro-F1':>10}{'95% interval':>16}{'ECE':>8}"]
    for task, m in evaluation.metrics.items():
        if m is None:
            lines.append(f"{task:<10}{'-':>7}  (no labelled rows)")
            continue
        lines.append(f"{task:<10}{m['n']:>7}{m['accuracy']:>10.3f}{_shown(m['ci']['accuracy']):>16}"
                     f"{m['macro_f1']:>10.3f}{_shown(m['ci']['macro_f1']):>16}{m['ece']:>8.3f}")
        recalls = ", ".join(f"{name} {'-' if r is None else f'{r:.2f}'}" for name, r in m["recall"].items())
        lines.append(f"  recall: {recalls}")
    if evaluation.skipped:
        lines.append(f"{len(evaluation.skipped)} unreadable image(s) skipped")
    return "\n".join(lines)
