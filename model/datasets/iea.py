"""IEA (Yu et al., "Towards Unified Aesthetics and Emotion Prediction in Images", ICIP 2019):
the FI images with 10 aesthetic ratings each on a 10/7/4/1 scale, both labels on every image.

Its public release (junfish/IEA-dataset) is one HDF5 file of decoded images and one-hot labels,
without the ratings, which this importer does not read. The input here is a documented CSV,
ROOT/iea.csv, with a header line:

    image,emotion,r1,r2,r3,r4,r5,r6,r7,r8,r9,r10[,split]

image is relative to ROOT (or absolute), emotion one of the 8 Mikels names, r1..r10 the ratings
(each 10, 7, 4 or 1), split optional (train, val or test; without the column: all.jsonl).
Aesthetic: mean rating below 5 is low, else high; soft: share of ratings above 5 is high.
"""
from __future__ import annotations

import csv
from pathlib import Path
from collections.abc import Iterator

from ..classes import DEFAULT_CLASSES
from ..errors import DatasetError
from .ratings import aesthetic_label
from .writer import image_row, require_file

RATINGS = tuple(f"r{i}" for i in range(1, 11))
COLUMNS = ("image", "emotion", *RATINGS)
SCALE = {"10": 10, "7": 7, "4": 4, "1": 1}
SPLITS = {"train", "val", "test"}


def import_iea(root: Path, soft: bool = False) -> tuple[dict, Iterator[tuple[str, dict]]]:
    table = require_file(root / "iea.csv", "IEA's image, emotion and 10 ratings per line")
    return dict(DEFAULT_CLASSES), _rows(root.resolve(), table, soft)


def _rows(root: Path, table: Path, soft: bool) -> Iterator[tuple[str, dict]]:
    with open(table, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        has_split = _check_header(table, header)
        for fields in reader:
            if not fields:
                continue
            yield _parse_line(root, table, reader.line_num, fields, has_split, soft)


def _check_header(table: Path, header: list | None) -> bool:
    names = tuple(name.strip() for name in header or ())
    if names == COLUMNS:
        return False
    if names == (*COLUMNS, "split"):
        return True
    raise DatasetError(f"{table}:1: header must be {','.join(COLUMNS)}[,split], got {','.join(names) or 'nothing'}")


def _parse_line(root: Path, table: Path, number: int, fields: list[str], has_split: bool, soft: bool):
    where = f"{table}:{number}"
    if len(fields) != len(COLUMNS) + has_split:
        raise DatasetError(f"{where}: expected {len(COLUMNS) + has_split} columns, got {len(fields)}")
    image, emotion, *ratings = (field.strip() for field in fields)
    split = ratings.pop() if has_split else "all"
    if not image:
        raise DatasetError(f"{where}: empty image path")
    if emotion not in DEFAULT_CLASSES["emotion"]:
        raise DatasetError(f"{where}: unknown emotion {emotion!r} (known: {', '.join(DEFAULT_CLASSES['emotion'])})")
    if has_split and split not in SPLITS:
        raise DatasetError(f"{where}: split must be train, val or test, got {split!r}")
    wrong = [r for r in ratings if r not in SCALE]
    if wrong:
        raise DatasetError(f"{where}: ratings must be 10, 7, 4 or 1, got {wrong[0]!r}")
    counts: dict[int, int] = {}
    for rating in ratings:
        counts[SCALE[rating]] = counts.get(SCALE[rating], 0) + 1
    row = image_row(root / image, aesthetic=aesthetic_label(counts, soft), emotion=emotion)
    return split, row
