"""The one writer every importer shares: rows by split into DIR/<split>.jsonl, header first."""
from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Iterable

from ..classes import check_classes
from ..errors import DatasetError

PARTIAL = ".partial"


def write_splits(out_dir: str | Path, classes: dict, rows: Iterable[tuple[str, dict]]) -> dict[str, int]:
    """Write each (split, row) to out_dir/<split>.jsonl and return the row count per split.
    Files are written under a temporary name and renamed only when the whole import succeeded,
    so a layout error half-way leaves no manifest that looks complete."""
    header = json.dumps({"classes": {task: list(names) for task, names in check_classes(classes).items()}})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, counts = {}, {}
    try:
        for split, row in rows:
            handle = files.get(split)
            if handle is None:
                # one open file per split while rows stream in; _close closes them all, on failure too
                handle = files[split] = open(out_dir / f"{split}.jsonl{PARTIAL}", "w", encoding="utf-8")  # noqa: SIM115
                handle.write(header + "\n")
                counts[split] = 0
            handle.write(json.dumps(row) + "\n")
            counts[split] += 1
    except BaseException:
        _close(files)
        for split in files:
            (out_dir / f"{split}.jsonl{PARTIAL}").unlink(missing_ok=True)
        raise
    _close(files)
    if not counts:
        raise DatasetError("the dataset has no labelled images")
    for split in files:
        os.replace(out_dir / f"{split}.jsonl{PARTIAL}", out_dir / f"{split}.jsonl")
    return counts


def _close(files: dict) -> None:
    for handle in files.values():
        handle.close()


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{path}: not found ({what})")
    return path


def image_row(image: Path, aesthetic=None, emotion=None) -> dict:
    """A manifest row; the path is absolute because the manifest lives in another folder."""
    row = {"image": str(image)}
    if aesthetic is not None:
        row["aesthetic"] = aesthetic
    if emotion is not None:
        row["emotion"] = emotion
    return row
