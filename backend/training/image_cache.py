"""Training images fetched once and kept pre-resized (256x256 PNG) under the data directory,
shared by every later job (and by workers on other machines through the shared volume)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from PIL import Image

from model.transforms import TRAIN_SIZE

from backend.fetch.fetcher import ImageFetcher


def cache_path(cache_dir: Path, url: str) -> Path:
    return Path(cache_dir) / f"{hashlib.sha256(url.encode()).hexdigest()}.png"


def cached_training_image(fetcher: ImageFetcher, url: str, cache_dir: Path, hostname: str | None,
                          access_token: str | None, size: int = TRAIN_SIZE) -> Path:
    """The cached copy's path; downloads and resizes on a miss. Raises ImageFetchError."""
    path = cache_path(cache_dir, url)
    if path.is_file():
        return path
    image = fetcher.fetch(url, hostname=hostname, access_token=access_token)
    resized = image.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        resized.save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
