"""model/files.py's atomic write and backend/fetch/disk_cache.py's byte bound, with several
writers and evictors at once (threads and processes)."""
from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

from model.files import write_bytes_atomically

from backend.fetch.disk_cache import DiskCache


def _write_many(target: str, byte: int, times: int) -> None:
    for _ in range(times):
        write_bytes_atomically(target, bytes([byte]) * 100_000)


def test_concurrent_writers_of_one_file_never_leave_a_mixed_or_partial_file(tmp_path):
    target = tmp_path / "snapshot.jsonl"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(target), byte, 30)) for byte in (65, 66, 67)]
    for writer in writers:
        writer.start()
    seen = set()
    while any(w.is_alive() for w in writers):
        if target.exists():
            data = target.read_bytes()
            assert len(data) == 100_000 and len(set(data)) == 1
            seen.add(data[0])
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert len(set(target.read_bytes())) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot.jsonl"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.json"
    target.write_text("old")

    def fail(temp):
        Path(temp).write_text("half")
        raise OSError(28, "No space left on device")

    from model.files import write_atomically
    try:
        write_atomically(target, fail)
    except OSError:
        pass
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def _fill(cache: DiskCache, key: str, size: int, used_at: float) -> Path:
    path = cache.write(key, lambda temp: Path(temp).write_bytes(b"x" * size))
    os.utime(path, (used_at, used_at))
    return path


def test_eviction_deletes_least_recently_used_first(tmp_path):
    cache = DiskCache(tmp_path, max_bytes=3000)
    for i, key in enumerate("abcd"):
        _fill(cache, key, 1000, used_at=1_000_000 + i)
    os.utime(cache.path("a"), (1_000_010, 1_000_010))  # as a read does: "a" is now the newest
    assert cache.read_bytes("b") is not None  # a read touches: "b" is newer than "a" now
    assert cache.evict_over_bound() == 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(cache.path(k).name for k in "ab")


def test_eviction_spares_the_files_a_job_is_about_to_read(tmp_path):
    cache = DiskCache(tmp_path, max_bytes=1000, suffix=".png")
    kept = [_fill(cache, key, 1000, used_at=1_000_000 + i) for i, key in enumerate("ab")]
    _fill(cache, "c", 1000, used_at=1_000_009)
    cache.evict_over_bound(keep=kept)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_eviction_ignores_writers_temporary_files_and_counts_other_processes_writes(tmp_path):
    cache = DiskCache(tmp_path, max_bytes=2500)
    (tmp_path / ".entry.partial").write_bytes(b"x" * 10_000)  # another writer's file in progress
    for i, key in enumerate("ab"):
        _fill(cache, key, 1000, used_at=1_000_000 + i)
    assert cache.evict_over_bound() == 0
    other = DiskCache(tmp_path, max_bytes=2500)  # another process, with its own count
    _fill(other, "c", 1000, used_at=1_000_005)
    assert other.evict_over_bound() == 1000
    assert not cache.path("a").exists() and (tmp_path / ".entry.partial").exists()


def test_files_vanishing_under_readers_and_evictors_are_misses(tmp_path):
    caches = [DiskCache(tmp_path, max_bytes=20_000) for _ in range(4)]
    errors = []

    def work(cache: DiskCache, worker: int) -> None:
        try:
            for i in range(150):
                key = f"k{(i * 7 + worker) % 60}"
                data = cache.read_bytes(key)
                assert data is None or data == b"y" * 1000
                if data is None:
                    cache.write(key, lambda temp: Path(temp).write_bytes(b"y" * 1000))
                cache.hit(f"k{i % 60}")
                cache.evict_over_bound()
                if i % 10 == 0:
                    cache.drop(f"k{(i * 3) % 60}")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c, n)) for n, c in enumerate(caches)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
