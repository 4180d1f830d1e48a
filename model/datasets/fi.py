"""FI, Flickr & Instagram (You et al., AAAI 2016): one folder per Mikels emotion holding that
emotion's images (amusement, anger, awe, contentment, disgust, excitement, fear, sadness).
The archive itself could not be checked here for the folders' capitalisation, so the match
ignores case. FI publishes no split: every image goes to all.jsonl (`aesemo train` holds out its
own seeded 20 %).
"""
from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Iterator

from ..classes import DEFAULT_CLASSES
from ..errors import DatasetError
from .writer import image_row

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}


def import_fi(root: Path, soft: bool = False) -> tuple[dict, Iterator[tuple[str, dict]]]:
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (FI: one folder per emotion)")
    folders = _emotion_folders(root)
    return dict(DEFAULT_CLASSES), _rows(folders)


def _emotion_folders(root: Path) -> dict[str, Path]:
    emotions = DEFAULT_CLASSES["emotion"]
    folders = {}
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        name = entry.name.lower()
        if name not in emotions:
            raise DatasetError(f"{entry}: not one of FI's emotion folders ({', '.join(emotions)})")
        if name in folders:
            raise DatasetError(f"{entry}: a second folder for {name!r} (the other is {folders[name]})")
        folders[name] = entry.resolve()
    missing = [name for name in emotions if name not in folders]
    if missing:
        raise DatasetError(f"{root}: no folder for {', '.join(missing)} (FI has one per emotion)")
    return folders


def _rows(folders: dict[str, Path]) -> Iterator[tuple[str, dict]]:
    for emotion, folder in folders.items():
        names = sorted(name for name in os.listdir(folder) if Path(name).suffix.lower() in IMAGE_SUFFIXES)
        if not names:
            raise DatasetError(f"{folder}: no images")
        for name in names:
            yield "all", image_row(folder / name, emotion=emotion)
