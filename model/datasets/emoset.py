"""EmoSet-118K (Yang et al., ICCV 2023), as its authors' loader reads it (EmoSet repository,
dataset.py):

    info.json                  {"emotion": {"label2idx": {name: index}, ...}, ...attributes}
    train.json, val.json, test.json
                               a JSON array; each item [emotion, image id, image path,
                               annotation path], the paths relative to the root
    image/<emotion>/<id>.jpg, annotation/<emotion>/<id>.json

The class header lists the emotions in info.json's index order (EmoSet's own: amusement, anger,
awe, contentment, disgust, excitement, fear, sadness). Per-image annotation files (attributes)
are not read: the emotion is in the split file.
"""
from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Iterator

from ..classes import DEFAULT_CLASSES
from ..errors import DatasetError
from .writer import image_row, require_file

SPLITS = ("train", "val", "test")
ITEM_FIELDS = 4


def import_emoset(root: Path, soft: bool = False) -> tuple[dict, Iterator[tuple[str, dict]]]:
    emotions = _emotion_order(require_file(root / "info.json", "EmoSet's class names"))
    split_files = {split: require_file(root / f"{split}.json", f"EmoSet's {split} split") for split in SPLITS}
    classes = {"aesthetic": DEFAULT_CLASSES["aesthetic"], "emotion": emotions}
    return classes, _rows(root, split_files, set(emotions))


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None


def _emotion_order(path: Path) -> tuple[str, ...]:
    info = _load_json(path)
    label2idx = info.get("emotion", {}).get("label2idx") if isinstance(info, dict) else None
    if not isinstance(label2idx, dict) or not label2idx:
        raise DatasetError(f"{path}: no emotion.label2idx mapping")
    if sorted(label2idx.values()) != list(range(len(label2idx))):
        raise DatasetError(f"{path}: emotion.label2idx indices must be 0..{len(label2idx) - 1}")
    return tuple(sorted(label2idx, key=label2idx.get))


def _rows(root: Path, split_files: dict[str, Path], emotions: set) -> Iterator[tuple[str, dict]]:
    root = root.resolve()
    for split, path in split_files.items():
        items = _load_json(path)
        if not isinstance(items, list):
            raise DatasetError(f"{path}: expected a JSON array of [emotion, image id, image path, annotation path]")
        for number, item in enumerate(items, start=1):
            emotion, image = _parse_item(path, number, item, emotions)
            yield split, image_row(root / image, emotion=emotion)


def _parse_item(path: Path, number: int, item, emotions: set) -> tuple[str, str]:
    where = f"{path}: item {number}"
    if not isinstance(item, list) or len(item) != ITEM_FIELDS or not all(isinstance(f, str) for f in item):
        raise DatasetError(f"{where}: expected [emotion, image id, image path, annotation path], got {item!r:.80}")
    emotion, _, image, _ = item
    if emotion not in emotions:
        raise DatasetError(f"{where}: emotion {emotion!r} is not in info.json")
    if Path(image).is_absolute() or ".." in Path(image).parts:
        raise DatasetError(f"{where}: image path {image!r} must stay inside the dataset folder")
    return emotion, image
