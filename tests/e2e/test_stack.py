"""`aesemo stack` end to end: the whole product from one command, twice on one data directory.

The first run starts a Label Studio on a fresh database (1-4 minutes on a busy machine), makes the
demo project, its annotators and tasks, and pre-annotates them; SIGINT must stop every process it
started. The second run must reuse all of it (same project, no new tasks or users) and stop on
SIGTERM just as cleanly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from backend.labelstudio.admin_client import LabelStudioClient
from backend.core.redis_connection import embedded_redis_running
from backend.tools.demo_project import INDEPENDENT_VOTES, SAMPLE_PHOTOS
from backend.tools.stack import READY_LINE
from backend_proc import SCRUB_ENV, aesemo_executable
from net import free_port, wait_for

READY_TIMEOUT_S = 600
STOP_TIMEOUT_S = 90
ANNOTATORS = [f"annotator{i}@example.com" for i in (1, 2, 3)]


class StackRun:
    """One `aesemo stack` subprocess; its output is collected (and copied to `out_path`) by a thread."""

    def __init__(self, data_dir: Path, ls_port: int, backend_port: int, out_path: Path):
        self.data_dir = data_dir
        self.out_path = out_path
        env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV and not k.startswith("AESEMO_")}
        # no test reaches the internet for ImageNet weights: the stack starts random
        env.update(AESEMO_DATA_DIR=str(data_dir), AESEMO_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [aesemo_executable(), "stack", "--ls-port", str(ls_port), "--backend-port", str(backend_port)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)  # a Ctrl-C in the test's terminal must not reach it
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.out_path, "w") as out:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                out.write(line)
                out.flush()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        start = time.monotonic()
        while READY_LINE not in self.lines:
            assert self.proc.poll() is None, f"aesemo stack exited with {self.proc.returncode}:\n{self.output}"
            assert time.monotonic() - start < timeout_s, f"not ready after {timeout_s} s:\n{self.output}"
            time.sleep(1)
        return time.monotonic() - start

    def child_pids(self) -> dict[str, int]:
        """`started <name> (pid N; ...)` lines: each child leads its own process group."""
        found = (re.match(r"aesemo stack: started (.+) \(pid (\d+);", line) for line in self.lines)
        return {m.group(1): int(m.group(2)) for m in found if m}

    def stop(self, sig: int) -> tuple[int, float]:
        start = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._reader.join(timeout=10)
        return code, time.monotonic() - start

    def kill_leftovers(self) -> None:
        """Safety net after a failed test: nothing may outlive it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for pgid in self.child_pids().values():
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        from backend.core.redis_connection import stop_embedded_redis

        stop_embedded_redis(self.data_dir)


def _live(stat_fields: list[str]) -> bool:
    return stat_fields[0] != "Z"  # a zombie has exited; only its parent has not reaped it yet


def _stat(pid_dir: Path) -> list[str] | None:
    try:
        text = (pid_dir / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # state, ppid, pgrp, ...


def live_group_members(pgids: set[int]) -> list[str]:
    """Processes still running in any of these process groups."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(entry)
            if fields and int(fields[2]) in pgids and _live(fields):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append(f"{entry.name}: {cmdline[:120]}")
    return out


def pid_alive(pid: int) -> bool:
    fields = _stat(Path(f"/proc/{pid}"))
    return fields is not None and _live(fields)


def assert_everything_stopped(run: StackRun, redis_pid: int) -> None:
    pgids = set(run.child_pids().values())
    assert len(pgids) == 3, run.output  # Label Studio, the backend, the worker
    assert live_group_members(pgids) == [], run.output
    # SHUTDOWN answers before the server has exited
    wait_for(lambda: not pid_alive(redis_pid), 10, interval=0.2, what="the embedded Redis to exit")
    assert not embedded_redis_running(run.data_dir)


def check_demo_project(client: LabelStudioClient, state: dict, backend_port: int) -> list[int]:
    """The project, its 3 annotators, one task per sample photo, and no prediction: the backend
    serves an untrained base version and sends no suggestions from it until the first training."""
    project = client.project(state["project_id"])
    assert project["maximum_annotations"] == 3 and project["overlap_cohort_percentage"] == 100, project
    assert {k: project[k] for k in INDEPENDENT_VOTES} == INDEPENDENT_VOTES, project
    emails = [user["email"] for user in client.users()]
    assert sorted(emails) == sorted(["admin@example.com", *ANNOTATORS]), emails
    for annotator in state["annotators"]:
        assert client.whoami(token=annotator["token"])["email"] == annotator["email"]
    backends = client.ml_backends(state["project_id"])
    assert [b["url"] for b in backends] == [f"http://127.0.0.1:{backend_port}"], backends
    tasks = client.tasks(state["project_id"])
    assert len(tasks) == len(SAMPLE_PHOTOS), [t["data"] for t in tasks]
    assert all(t["overlap"] == 3 for t in tasks), [t["overlap"] for t in tasks]
    assert backends[0]["model_version"].startswith("base-resnet18-"), backends
    assert backends[0]["model_version"].endswith("-untrained"), backends
    for task in tasks:
        assert client.predictions(task["id"]) == [], task["data"]
    return sorted(t["id"] for t in tasks)


def test_stack_brings_everything_up_stops_it_and_reuses_its_state(tmp_path):
    if os.environ.get("AESEMO_SKIP_E2E", "") not in ("", "0"):
        pytest.skip("AESEMO_SKIP_E2E is set")
    data_dir = tmp_path / "data"
    ls_port, backend_port = free_port(), free_port()

    first = StackRun(data_dir, ls_port, backend_port, tmp_path / "stack-1.out")
    try:
        ready_s = first.wait_ready()
        state = json.loads((data_dir / "stack.json").read_text())
        assert [a["email"] for a in state["annotators"]] == ANNOTATORS
        client = LabelStudioClient(f"http://127.0.0.1:{ls_port}", state["admin"]["token"])
        task_ids = check_demo_project(client, state, backend_port)
        assert "suggestions start after the first training" in first.output, first.output
        redis_pid = int((data_dir / "redis" / "redis.pid").read_text())
        code, stop_s = first.stop(signal.SIGINT)
        assert code == 0, first.output
        assert_everything_stopped(first, redis_pid)
        print(f"first run: ready in {ready_s:.0f} s, stopped in {stop_s:.0f} s")
    finally:
        first.kill_leftovers()

    second = StackRun(data_dir, ls_port, backend_port, tmp_path / "stack-2.out")
    try:
        ready_s = second.wait_ready()
        assert f"reusing project {state['project_id']}" in second.output, second.output
        assert "imported" not in second.output and "signed up" not in second.output, second.output
        again = json.loads((data_dir / "stack.json").read_text())
        assert again == state
        client = LabelStudioClient(f"http://127.0.0.1:{ls_port}", state["admin"]["token"])  # a new server
        assert check_demo_project(client, state, backend_port) == task_ids
        redis_pid = int((data_dir / "redis" / "redis.pid").read_text())
        code, stop_s = second.stop(signal.SIGTERM)
        assert code == 0, second.output
        assert_everything_stopped(second, redis_pid)
        print(f"second run: ready in {ready_s:.0f} s, stopped in {stop_s:.0f} s")
    finally:
        second.kill_leftovers()
