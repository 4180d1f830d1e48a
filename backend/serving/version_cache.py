"""A host's copies of the versions it uses, and the leases that keep retention off a version while
a process fetches or loads it.

With an object store (backend/serving/version_store.py), `<data dir>/projects/<p>/versions/` is a
cache: a version is downloaded there on first use (every file checked against the manifest's
sha256, into a dot folder renamed whole, one process at a time per version under a file lock),
marked used each time a process takes it, and the least recently used ones are removed once the
folders hold more than AESEMO_VERSION_CACHE_BYTES. Without a store the folders are the versions
themselves and nothing is downloaded or evicted.

Leases (Redis, `keys.version_loading`): a process holds one on a version while it downloads and
loads it; retention (backend/serving/retention.py) marks a version it is about to delete
(`keys.version_deleting`) and then looks for leases. Each side writes its own key before it reads
the other's, so either retention sees the lease and keeps the version, or the loader sees the mark
and treats the version as gone: never a deletion under a load.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import redis

from model.version import META_FILE

from backend.core import keys
from backend.core.errors import NotFound, Unavailable
from backend.serving.version_store import LocalStore, version_store

log = logging.getLogger(__name__)

LEASE_S = 600  # longer than a download and load of the largest version; a dead holder's lapses
USED_STAMP = ".used"  # touched when a process takes the version: the cache's recency


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextmanager
def version_lease(client: redis.Redis, project: str, name: str):
    """Held while the version is fetched or loaded; NotFound when retention is deleting it."""
    key, token = keys.version_loading(project, name), uuid.uuid4().hex
    try:
        client.zadd(key, {token: _now_ms() + LEASE_S * 1000})
        client.pexpire(key, LEASE_S * 1000)
        deleting = client.exists(keys.version_deleting(project, name))
    except redis.RedisError as exc:
        raise Unavailable(f"cannot lease version {name} of project {project}: Redis: {type(exc).__name__}") from None
    try:
        if deleting:
            raise NotFound(f"version {name} of project {project} is being deleted (retention)")
        yield
    finally:
        try:
            client.zrem(key, token)
        except redis.RedisError:
            pass  # it lapses on its own


def leased(client: redis.Redis, project: str, name: str) -> bool:
    """Whether some process holds a live lease on the version."""
    key = keys.version_loading(project, name)
    client.zremrangebyscore(key, "-inf", _now_ms())
    return client.zcard(key) > 0


def local_folder(settings, project: str, name: str) -> Path:
    return LocalStore(settings.data_dir).folder(project, name)


def local_version(settings, client: redis.Redis, project: str, name: str) -> Path:
    """The version's folder on this host, downloaded from the store when missing (call it under
    `version_lease`); NotFound when the project has no such version."""
    store, folder = version_store(settings), local_folder(settings, project, name)
    if not store.shared:
        return folder
    if not (folder / META_FILE).is_file():
        _download(store, project, name, folder)
        evict_over_bound(settings, client, keep=folder)
    _mark_used(folder)
    return folder


def _download(store, project: str, name: str, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process of this host may be fetching it
        if (folder / META_FILE).is_file():
            return
        staging = folder.parent / f".{name}.download"
        shutil.rmtree(staging, ignore_errors=True)
        started = time.monotonic()
        try:
            store.download(project, name, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        os.replace(staging, folder)
        log.info("downloaded version %s of project %s in %.1f s", name, project, time.monotonic() - started)


def _mark_used(folder: Path) -> None:
    try:
        (folder / USED_STAMP).touch()
    except OSError:
        pass  # read-only or just evicted: the recency is a hint


def _last_used(folder: Path) -> float:
    for path in (folder / USED_STAMP, folder):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def evict_over_bound(settings, client: redis.Redis, keep: Path | None = None) -> list[str]:
    """Remove the least recently used downloaded versions while the cache is over its bound;
    never `keep` nor a version some process holds a lease on. Returns the removed folders'
    `<project>/<version>`."""
    root = Path(settings.data_dir) / "projects"
    folders = [p.parent for p in root.glob(f"*/versions/*/{META_FILE}") if not p.parent.name.startswith(".")]
    sized = sorted((_last_used(f), _size(f), f) for f in folders)
    total, removed = sum(size for _, size, _ in sized), []
    for _, size, folder in sized:
        if total <= settings.version_cache_bytes:
            break
        project, name = folder.parent.parent.name, folder.name
        if folder == keep or leased(client, project, name):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
        removed.append(f"{project}/{name}")
    if removed:
        log.info("version cache over %d bytes: removed %s", settings.version_cache_bytes, ", ".join(removed))
    return removed


def report_copy(settings, project: str, name: str, file: str) -> Path | None:
    """A file of a version's report on this host: the version's own when it is here, else (with a
    store) fetched alone into `<data dir>/cache/reports/`, so the admin page never downloads weights
    to show a PNG. None when the version has no such file."""
    own = local_folder(settings, project, name) / "report" / file
    store = version_store(settings)
    if own.is_file() or not store.shared:
        return own if own.is_file() else None
    copy = Path(settings.data_dir) / "cache" / "reports" / project / name / file
    if not copy.is_file():
        body = store.read_file(project, name, f"report/{file}")
        if body is None:
            return None
        copy.parent.mkdir(parents=True, exist_ok=True)
        partial = copy.with_name(f".{file}.{uuid.uuid4().hex}")
        partial.write_bytes(body)
        os.replace(partial, copy)
    return copy


def report_names(settings, project: str, name: str) -> list[str]:
    """The files of a version's report (`report/` in its folder, or in its manifest)."""
    store = version_store(settings)
    if store.shared:
        files = (store.manifest(project, name) or {}).get("files", {})
        return [f[len("report/"):] for f in files if f.startswith("report/") and f.count("/") == 1]
    return [p.name for p in (local_folder(settings, project, name) / "report").glob("*") if p.is_file()]
