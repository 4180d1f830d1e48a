"""AVA (Murray et al., CVPR 2012), as its June 2012 release documents it (AVA_dataset/README):

    AVA.txt                           per line: index, image id, counts of ratings 1..10,
                                      2 semantic tag ids (0 = none), challenge id; space separated
    aesthetics_image_lists/generic_ls_train.jpgl, generic_test.jpgl     one image id a line
    images/<image id>.jpg             fetched separately (the release holds no images)

Splits: train (generic_ls_train) and test (generic_test) when the lists are there; images in
neither list are left out. Without the folder, every image goes to all.jsonl.
"""
from __future__ import annotations

from pathlib import Path
from collections.abc import Iterator

from ..classes import DEFAULT_CLASSES
from ..errors import DatasetError
from .ratings import aesthetic_label
from .writer import image_row, require_file

COLUMNS = 15
SPLIT_LISTS = {"train": "generic_ls_train.jpgl", "test": "generic_test.jpgl"}


def import_ava(root: Path, soft: bool = False) -> tuple[dict, Iterator[tuple[str, dict]]]:
    index = require_file(root / "AVA.txt", "AVA's index of ratings")
    images = root / "images"
    if not images.is_dir():
        raise DatasetError(f"{images}: not found (AVA's images, one <image id>.jpg each)")
    split_of = _split_lists(root / "aesthetics_image_lists")
    return dict(DEFAULT_CLASSES), _rows(index, images, split_of, soft)


def _split_lists(folder: Path) -> dict[str, str] | None:
    if not folder.is_dir():
        return None
    split_of = {}
    for split, name in SPLIT_LISTS.items():
        path = require_file(folder / name, f"AVA's {split} list")
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            image_id = text.strip()
            if not image_id:
                continue
            if not image_id.isdigit():
                raise DatasetError(f"{path}:{number}: expected an image id, got {text!r}")
            split_of[image_id] = split
    return split_of


def _rows(index: Path, images: Path, split_of: dict | None, soft: bool) -> Iterator[tuple[str, dict]]:
    with open(index, encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            fields = text.split()
            if not fields:
                continue
            image_id, counts = _parse_line(index, number, fields)
            split = "all" if split_of is None else split_of.get(image_id)
            if split is None:
                continue
            label = aesthetic_label(counts, soft)
            if label is None:
                raise DatasetError(f"{index}:{number}: image {image_id} has no ratings")
            yield split, image_row(images / f"{image_id}.jpg", aesthetic=label)


def _parse_line(index: Path, number: int, fields: list[str]) -> tuple[str, dict[int, int]]:
    if len(fields) != COLUMNS:
        raise DatasetError(f"{index}:{number}: expected {COLUMNS} columns (index, image id, 10 rating counts, "
                           f"2 tags, challenge), got {len(fields)}")
    if not all(field.isdigit() for field in fields):
        raise DatasetError(f"{index}:{number}: every column must be a whole number >= 0")
    return fields[1], {rating: int(fields[rating + 1]) for rating in range(1, 11)}
