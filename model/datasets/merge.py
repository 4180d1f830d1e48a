"""Concatenate manifests into one, under one classes header.

Rows labelled for one task only train that task, so AVA (aesthetic only) and FI or EmoSet
(emotion only) mix in one manifest. Each task's class names must be the same set in every
input; the first input's order is kept. Relative image paths are made absolute, because they
were relative to their own manifest's folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..classes import DEFAULT_CLASSES, TASKS, check_classes
from ..errors import DatasetError
from .writer import PARTIAL


def merge_manifests(inputs: list[Path], out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + PARTIAL)
    classes, rows = None, 0
    try:
        with open(partial, "w", encoding="utf-8") as sink:
            for path in inputs:
                classes, written = _copy(path, sink, classes)
                rows += written
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    return rows


def _copy(path: Path, sink, classes: dict | None) -> tuple[dict, int]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    records = [(number, _record(path, number, text)) for number, text in enumerate(lines, start=1) if text.strip()]
    own = DEFAULT_CLASSES
    if records and "classes" in records[0][1] and "image" not in records[0][1]:
        own = records.pop(0)[1]["classes"]
    own = _checked(path, own)
    if classes is None:
        classes = own
        sink.write(json.dumps({"classes": {task: list(names) for task, names in classes.items()}}) + "\n")
    else:
        _same_classes(path, classes, own)
    for number, record in records:
        sink.write(json.dumps(_absolute(path, number, record)) + "\n")
    return classes, len(records)


def _record(path: Path, number: int, text: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise DatasetError(f"{path}:{number}: a row must be a JSON object")
    return record


def _checked(path: Path, classes) -> dict:
    try:
        return check_classes(classes if isinstance(classes, dict) else {})
    except ValueError as exc:
        raise DatasetError(f"{path}:1: {exc}") from None


def _same_classes(path: Path, first: dict, own: dict) -> None:
    for task in TASKS:
        if set(first[task]) != set(own[task]):
            raise DatasetError(f"{path}:1: {task} classes {list(own[task])} differ from the first manifest's "
                               f"{list(first[task])}")


def _absolute(path: Path, number: int, record: dict) -> dict:
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise DatasetError(f"{path}:{number}: missing \"image\"")
    if not Path(image).is_absolute():
        record["image"] = str((path.parent / image).resolve())
    return record
