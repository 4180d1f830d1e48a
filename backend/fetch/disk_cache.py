"""A folder of cached files with a byte bound: the least recently used go first.

Used by the image downloads (<data dir>/cache/downloads) and the training images
(<data dir>/cache/train256). Several threads and processes (serve, workers, other machines on
a shared volume) read, write and evict the same folder at once, so any file may vanish
between two steps: each step takes that as a miss, never as an error.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from collections.abc import Callable, Iterable

from model.files import write_atomically

log = logging.getLogger(__name__)

# eviction goes below the bound by this share, so the next writes need no new scan of the folder
_EVICT_TO = 0.9


class DiskCache:
    """Files named by the sha256 of their key. A read touches the file's modification time, so
    the oldest modification time is the least recently used file."""

    def __init__(self, folder: str | Path, max_bytes: int, suffix: str = ""):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._suffix = suffix
        self._lock = threading.Lock()
        self._estimated_bytes: int | None = None  # None: not scanned yet

    def path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha256(key.encode('utf-8')).hexdigest()}{self._suffix}"

    def read_bytes(self, key: str, max_size: int | None = None) -> bytes | None:
        """The cached bytes, or None on a miss, on a file over `max_size` or an unreadable one."""
        path = self.path(key)
        try:
            if max_size is not None and path.stat().st_size > max_size:
                return None
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cache entry %s unreadable (%s); fetching again", path.name, exc.strerror)
            return None
        touch(path)
        return data

    def hit(self, key: str) -> Path | None:
        """The cached file's path, marked as used, or None on a miss."""
        path = self.path(key)
        return path if touch(path) else None

    def write(self, key: str, fill: Callable[[str], None]) -> Path:
        """`fill(temp_path)` writes the entry; readers see the whole file or none."""
        path = self.path(key)
        write_atomically(path, fill)
        with self._lock:
            if self._estimated_bytes is not None:
                self._estimated_bytes += _size(path)
        return path

    def drop(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def evict_over_bound(self, keep: Iterable[Path] = ()) -> int:
        """Delete least recently used files until the folder is under its bound; never those in
        `keep` (files a job is about to read). Scans the folder only when this process's own
        count says it may be over. Returns the bytes deleted."""
        with self._lock:
            if self._estimated_bytes is not None and self._estimated_bytes <= self.max_bytes:
                return 0
            entries = _entries(self.folder, self._suffix)
            total = sum(size for _, size, _ in entries)
            freed = _delete_oldest(entries, total - int(self.max_bytes * _EVICT_TO) if total > self.max_bytes else 0,
                                   {Path(p) for p in keep})
            self._estimated_bytes = total - freed
        if freed:
            log.info("cache %s: evicted %d bytes of least recently used files (bound %d)",
                     self.folder, freed, self.max_bytes)
        return freed


def touch(path: Path) -> bool:
    """Mark `path` as just used; False when it is gone (evicted meanwhile)."""
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _entries(folder: Path, suffix: str) -> list[tuple[float, int, Path]]:
    """(last use, size, path) of each cached file, oldest first. Temporary files of writers
    (names starting with a dot) are theirs, not entries."""
    entries = []
    with os.scandir(folder) as scan:
        for entry in scan:
            if entry.name.startswith(".") or not entry.name.endswith(suffix):
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, stat.st_size, Path(entry.path)))
    return sorted(entries)


def _delete_oldest(entries: list[tuple[float, int, Path]], excess: int, keep: set[Path]) -> int:
    freed = 0
    for _, size, path in entries:
        if freed >= excess:
            break
        if path in keep:
            continue
        try:
            path.unlink()
        except FileNotFoundError:  # another process evicted it first
            continue
        freed += size
    return freed
