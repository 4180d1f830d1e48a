"""Training images fetched once and kept pre-resized (256x256 PNG) under the data directory,
shared by every later job (and by workers on other machines through the shared volume)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from model.limits import TRAINING_DEFAULTS

from backend.fetch.disk_cache import DiskCache
from backend.fetch.fetcher import ImageFetcher


def training_image_cache(cache_dir: Path, max_bytes: int) -> DiskCache:
    return DiskCache(cache_dir, max_bytes, suffix=".png")


def cached_training_image(fetcher: ImageFetcher, url: str, cache: DiskCache, hostname: str | None,
                          access_token: str | None, size: int = TRAINING_DEFAULTS["train_size"]) -> Path:
    """The cached copy's path; downloads and resizes on a miss. Raises ImageFetchError. Keyed
    like the fetcher's own cache: a copy is only served to a job with the same credentials."""
    key = fetcher.cache_key(url, hostname=hostname, access_token=access_token)
    path = cache.hit(key)
    if path is not None:
        return path
    image = fetcher.fetch(url, hostname=hostname, access_token=access_token)
    resized = image.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return cache.write(key, lambda temp: resized.save(temp, format="PNG", compress_level=1))
