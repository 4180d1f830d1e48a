"""Writing a file so that no reader, thread or process, ever sees it half written.

Plain Python (no torch, no backend): both model/ and backend/ write through it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from collections.abc import Callable


def write_atomically(target: str | Path, write: Callable[[str], None]) -> None:
    """`write(temp_path)` fills a temporary file in `target`'s folder, which then replaces
    `target` in one rename. The temporary name is unique, so concurrent writers of the same
    target never share one; the last rename wins and each rename brings a whole file. The data
    is fsynced before the rename, so a crash leaves the old file or the new one, never an empty
    one. The file is readable by its owner only (mkstemp's mode)."""
    target = Path(target)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(fd)
    try:
        write(temp)
        _fsync(temp)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_bytes_atomically(target: str | Path, data: bytes) -> None:
    write_atomically(target, lambda temp: Path(temp).write_bytes(data))


def write_text_atomically(target: str | Path, text: str) -> None:
    write_atomically(target, lambda temp: Path(temp).write_text(text, encoding="utf-8"))


def _fsync(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
