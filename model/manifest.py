"""Training manifests: JSON lines, one image a line.

    {"classes": {"aesthetic": [...], "emotion": [...]}}        optional first line
    {"image": "a.jpg", "aesthetic": "high", "emotion": {"awe": 0.75, "fear": 0.25}, "weight": 1.0}
    {"image": "b.jpg", "emotion": "fear", "split": "test"}

A label is a class name, a distribution over class names (normalised here), or absent/null
when the image is not labelled for that task. An optional "split" (a dataset's own
train/val/test) is kept for `aesemo evaluate --split`; training reads every row whatever its split,
except the rows of `TrainConfig.heldout_split` (a training job's "heldout", model/heldout.py),
which are its held-out set and never trained on.
Relative image paths are relative to the manifest's folder. Rows that break the format stop
the whole read (a wrong class name means the manifest and the model disagree); unreadable
images are dealt with when loading.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .classes import DEFAULT_CLASSES, TASKS, check_classes
from .errors import ManifestError
from .manifest_lines import read_manifest_records


@dataclass
class Row:
    line: int                                  # 1-based line number in the manifest
    image: Path
    targets: dict[str, torch.Tensor | None]    # per task: a distribution over its classes, or None
    weight: float = 1.0
    split: str | None = None                   # the dataset's own split name, when the row carries one


@dataclass
class Manifest:
    path: Path
    classes: dict[str, tuple[str, ...]]
    rows: list[Row]


def read_manifest(path: str | Path, classes: dict | None = None) -> Manifest:
    """Parse and validate a manifest. `classes` (from the model being trained) wins over the
    manifest's own header; without either, the default class lists apply."""
    path = Path(path)
    header, records = read_manifest_records(path)
    try:
        chosen = check_classes(classes or header or DEFAULT_CLASSES)
    except ValueError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    if not records:
        raise ManifestError(f"manifest {path} has no rows")
    rows = [_parse_row(path, number, record, chosen) for number, record in records]
    return Manifest(path=path, classes=chosen, rows=rows)


def _parse_row(path: Path, number: int, record: dict, classes) -> Row:
    where = f"{path}:{number}"
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise ManifestError(f"{where}: missing \"image\"")
    targets = {task: _parse_label(where, task, record.get(task), classes[task]) for task in TASKS}
    if all(t is None for t in targets.values()):
        raise ManifestError(f"{where}: no label for either task")
    weight = record.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight <= 0:
        raise ManifestError(f"{where}: weight must be a positive number, got {weight!r}")
    split = record.get("split")
    if split is not None and (not isinstance(split, str) or not split):
        raise ManifestError(f"{where}: split must be a non-empty string, got {split!r}")
    image_path = Path(image)
    if not image_path.is_absolute():
        image_path = path.parent / image_path
    return Row(line=number, image=image_path, targets=targets, weight=float(weight), split=split)


def _parse_label(where: str, task: str, label, names: tuple[str, ...]) -> torch.Tensor | None:
    if label is None:
        return None
    index = {name: i for i, name in enumerate(names)}
    target = torch.zeros(len(names))
    if isinstance(label, str):
        if label not in index:
            raise ManifestError(f"{where}: unknown {task} class {label!r} (known: {', '.join(names)})")
        target[index[label]] = 1.0
        return target
    if isinstance(label, dict):
        for name, p in label.items():
            if name not in index:
                raise ManifestError(f"{where}: unknown {task} class {name!r} (known: {', '.join(names)})")
            if not isinstance(p, (int, float)) or isinstance(p, bool) or not math.isfinite(p) or p < 0:
                raise ManifestError(f"{where}: {task} probability of {name!r} must be a number >= 0, got {p!r}")
            target[index[name]] = float(p)
        if target.sum() <= 0:
            raise ManifestError(f"{where}: {task} distribution sums to 0")
        return target / target.sum()
    raise ManifestError(f"{where}: {task} label must be a class name or a {{class: probability}} object")
