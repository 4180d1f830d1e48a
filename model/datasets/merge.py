"""Concatenate manifests into one, under one classes header.

Rows labelled for one task only train that task, so AVA (aesthetic only) and FI or EmoSet
(emotion only) mix in one manifest. Each task's class names must be the same set in every
input; the first input's order is kept. Relative image paths are made absolute, because they
were relative to their own manifest's folder.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..classes import DEFAULT_CLASSES, TASKS, check_classes
from ..errors import DatasetError
from ..files import write_atomically
from ..manifest_lines import read_manifest_records


def merge_manifests(inputs: list[Path], out: Path) -> int:
    """Write every input's rows to `out` under the first input's header; returns the row count.
    Every input is read and checked first, so a refused merge writes nothing."""
    loaded = [(path, *read_manifest_records(path)) for path in inputs]
    classes = _checked(loaded[0][0], loaded[0][1] or DEFAULT_CLASSES)
    for path, header, _ in loaded[1:]:
        _same_classes(path, classes, _checked(path, header or DEFAULT_CLASSES))

    def write(temp: str) -> None:
        with open(temp, "w", encoding="utf-8") as sink:
            sink.write(json.dumps({"classes": {task: list(names) for task, names in classes.items()}}) + "\n")
            for path, _, records in loaded:
                for number, record in records:
                    sink.write(json.dumps(_absolute(path, number, record)) + "\n")

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, write)
    return sum(len(records) for _, _, records in loaded)


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
