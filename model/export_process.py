"""A version's runtime export (model/runtime.py) in a child process of its own.

NNCF's quantization and OpenVINO's conversion peak at several times the weights' size; in a child
that memory goes back to the system when it ends, and the process asking has no thread inside
torch or OpenVINO to wait for when it leaves. The child leads a process group of its own and reads
its stdin until end of file, where it kills its group: a parent that exits, or is killed, leaves
nothing running; the parent kills the group too once the child has ended (a library's forked
helpers, say). A child killed mid-export
leaves only its work folder (`.runtime-*` in the version folder; runtime.json is written last, after
the variant files are in place), which the next export under the folder's lock removes.

    python -m model.export_process '<json spec>'    (what `export_in_child` runs)
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from .errors import AesemoError

log = logging.getLogger(__name__)

# an export past this is stuck: vgg16's three variants take minutes on a 2-core CPU
EXPORT_TIMEOUT_S = 3600.0
# the child's exit status when its parent left (the end of its stdin), should the group kill miss it
PARENT_LEFT = 3


class ExportFailed(AesemoError):
    """The export process failed, was killed, or ended without writing its record."""


def export_in_child(folder: str | Path, make: Callable, niceness: int = 0, timeout_s: float = EXPORT_TIMEOUT_S,
                    **kwargs) -> dict:
    """`make(folder, **kwargs)` (an export function of model/runtime.py, or any module-level
    function) run in a child process; returns the runtime.json it wrote. `niceness` lowers the
    child's CPU priority, so that a serving process's requests go first. Raises ExportFailed
    with the child's reason (its exception, the signal that killed it, or the timeout)."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="aesemo-export-") as scratch:
        result = Path(scratch) / "result.json"
        spec = {"make": _qualified_name(make), "folder": str(folder), "kwargs": kwargs,
                "niceness": niceness, "result": str(result)}
        # the child imports the code this process runs (a checkout on sys.path, a test's helpers)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        child = subprocess.Popen([sys.executable, "-m", __name__, json.dumps(spec)], env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
        log.info("runtime export of %s: process %d", folder, child.pid)
        try:
            status = child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise ExportFailed(f"the export process took more than {timeout_s:.0f} s and was stopped") from None
        finally:
            _end(child)
        reason = _child_reason(status, result)
    if reason:
        raise ExportFailed(f"the export process {reason}")
    from .runtime import read_runtime
    record = read_runtime(folder)
    if record is None:
        raise ExportFailed("the export process ended without writing runtime.json for these weights")
    return record


def _qualified_name(make: Callable) -> str:
    name = f"{make.__module__}:{make.__qualname__}"
    if "<" in name:
        raise TypeError(f"{name} cannot run in a child process: pass a module-level function")
    return name


def _end(child: subprocess.Popen) -> None:
    """Kill the child if it is still running, reap it, and kill what is left of its group."""
    if child.poll() is None:
        child.kill()
    child.wait()
    if child.stdin:
        child.stdin.close()
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty


def _child_reason(status: int, result: Path) -> str | None:
    """None when the child succeeded, else what it said or how it ended."""
    try:
        said = json.loads(result.read_text(encoding="utf-8")).get("error")
    except (OSError, ValueError):
        said = None
    if said:
        return f"failed: {said}"
    if status < 0:
        return f"was killed by {signal.Signals(-status).name}"
    if status:
        return f"ended with exit status {status}"
    return None


def _leave_when_parent_leaves() -> None:
    """Ends this process and its group when its stdin reaches end of file: the parent is gone."""
    sys.stdin.buffer.read()
    os.killpg(0, signal.SIGKILL)
    os._exit(PARENT_LEFT)


def _run(spec: dict) -> int:
    threading.Thread(target=_leave_when_parent_leaves, name="parent-watch", daemon=True).start()
    if spec["niceness"]:
        os.nice(spec["niceness"])
    logging.basicConfig(level=logging.INFO, format=f"aesemo export {os.getpid()}: %(levelname)s: %(message)s")
    module, _, name = spec["make"].partition(":")
    try:
        make = importlib.import_module(module)
        for part in name.split("."):
            make = getattr(make, part)
        make(spec["folder"], **spec["kwargs"])
    except Exception as exc:  # the parent reports it; the traceback goes to the log
        log.exception("runtime export of %s failed", spec["folder"])
        Path(spec["result"]).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:1000]}), encoding="utf-8")
        return 1
    return 0


if __name__ == "__main__":
    code = _run(json.loads(sys.argv[1]))
    logging.shutdown()
    sys.stderr.flush()
    # skips tearing down torch and OpenVINO: the parent reads the files, nothing else is left to do
    os._exit(code)
