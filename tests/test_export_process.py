"""The runtime export in a child process (model/export_process.py, backend/serving/models.py):
a child killed mid-export leaves no half-made runtime and nothing running, a process that leaves
(or is killed) mid-export takes its child with it at once, and a later export succeeds."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from backend.serving.models import ModelCache
from backend.serving.registry import VersionRef
from model import runtime
from model.export_process import ExportFailed, export_in_child
from model.version import RUNTIME_FILE

import runtime_children
from net import wait_for
from training_project import write_small_version

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def export_processes(parent: psutil.Process | None = None) -> list[psutil.Process]:
    """The live export children under `parent` (this process by default)."""
    parent = parent or psutil.Process()
    found = []
    for child in parent.children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "model.export_process" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def hanging_export(folder: Path) -> Path | None:
    """The work folder of an export that wrote its first variant's files and now hangs."""
    return next((marker.parent for marker in folder.glob(f"{runtime.WORK_FOLDER_PREFIX}*/hanging")), None)


def assert_no_runtime_made(folder: Path) -> None:
    assert not (folder / RUNTIME_FILE).exists()
    assert not list(folder.glob("openvino-*")) and not list(folder.glob(f"{runtime.WORK_FOLDER_PREFIX}*"))


def test_an_export_killed_midway_leaves_no_half_made_runtime_and_nothing_running(tmp_path, monkeypatch):
    folder = tmp_path / "v"
    write_small_version(folder, seed=1)
    monkeypatch.setattr(runtime, "export_runtime", runtime_children.export_until_killed)
    cache = ModelCache(10 ** 8, "auto")
    served = cache.load(VersionRef("v", folder))
    work = wait_for(lambda: hanging_export(folder), 300, what="the export to write its first variant")
    assert list(work.glob("openvino-int8.*"))  # half made, in its work folder only
    [child] = export_processes()  # and no forked helper of it (telemetry is declined)
    assert child.nice() > psutil.Process().nice()  # requests get the CPU first
    child.kill()
    cache.wait_for_exports(timeout_s=120)
    assert served.path == "pytorch" and "killed by SIGKILL" in served.path_reason, served.path_reason
    assert_no_runtime_made(folder)
    assert gone(child.pid) and not export_processes()

    monkeypatch.setattr(runtime, "export_runtime", runtime_children.export_with_slow_pytorch)
    later = ModelCache(10 ** 8, "auto")  # another process, or this one restarted
    again = later.load(VersionRef("v", folder))
    later.wait_for_exports(timeout_s=600)
    assert again.path in runtime.VARIANTS, again.path_reason
    assert runtime.read_runtime(folder)["serving"] == again.path
    assert not list(folder.glob(f"{runtime.WORK_FOLDER_PREFIX}*")) and not export_processes()


LEAVING = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import psutil
    import runtime_children
    from backend.serving.models import ModelCache
    from backend.serving.registry import VersionRef
    from model import runtime
    folder, how = Path(sys.argv[1]), sys.argv[2]
    runtime.export_runtime = runtime_children.export_until_killed
    ModelCache(10 ** 8, "auto").load(VersionRef("v", folder))
    for _ in range(3000):
        children = [c for c in psutil.Process().children() if "model.export_process" in " ".join(c.cmdline())]
        if children and list(folder.glob(".runtime-*/hanging")):
            break
        time.sleep(0.1)
    (folder.parent / "child.pid").write_text(str(children[0].pid) if children else "none")
    if how == "wait":
        time.sleep(600)
""")


@pytest.mark.parametrize("how", ["exit", "wait"])
def test_a_process_leaving_mid_export_leaves_nothing_running(tmp_path, how):
    """`exit`: the process ends on its own with an export running: it has nothing to wait for and
    exits cleanly. `wait`: it is killed (SIGKILL, no exit hook runs). Either way its export child
    ends too, and the next export of the folder removes the work folder it left and succeeds."""
    folder = tmp_path / "v"
    write_small_version(folder, seed=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    leaving = subprocess.Popen([sys.executable, "-c", LEAVING, str(folder), how], env=env,
                               stdin=subprocess.DEVNULL)
    try:
        pid_file = wait_for(lambda: (tmp_path / "child.pid").is_file() and tmp_path / "child.pid", 300,
                            what="the export child to start")
        child = pid_file.read_text()
        assert child != "none", "the export ran inside the process, not in a child"
        if how == "wait":
            leaving.kill()
        assert leaving.wait(timeout=120) == (0 if how == "exit" else -9)
    finally:
        if leaving.poll() is None:
            leaving.kill()
    wait_for(lambda: gone(int(child)), 60, what="the export child to end")
    assert not (folder / RUNTIME_FILE).exists() and hanging_export(folder)  # its work folder, left behind

    record = runtime.export_once(folder, lambda: export_in_child(folder, runtime_children.export_with_slow_pytorch))
    assert record["serving"] in runtime.VARIANTS
    assert not list(folder.glob(f"{runtime.WORK_FOLDER_PREFIX}*"))


def test_an_export_function_the_child_cannot_import_is_refused_at_once(tmp_path):
    def local_export(folder):
        return {}
    with pytest.raises(TypeError, match="module-level function"):
        export_in_child(tmp_path, local_export)


def test_a_child_that_writes_no_record_is_a_failure(tmp_path):
    folder = tmp_path / "v"
    write_small_version(folder, seed=1)
    with pytest.raises(ExportFailed, match="without writing runtime.json"):
        export_in_child(folder, runtime_children.export_nothing)
