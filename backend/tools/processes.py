"""The processes `aesemo stack` runs: each child in its own process group with its log file,
stopped together (SIGTERM, then SIGKILL after a grace period) on Ctrl-C, SIGTERM or SIGHUP; the
embedded Redis it leases; and waiting for each to be ready while watching that none died."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator

from model.errors import AesemoError

from backend.core.redis_connection import lease_embedded_redis, release_embedded_redis


class StackError(AesemoError):
    """The stack cannot start (a port in use, a piece that died or never got ready)."""


def say(message: str) -> None:
    print(f"aesemo stack: {message}", flush=True)


class StopRequested(BaseException):
    """Raised by the signal handler; a BaseException so that no `except Exception` swallows it."""


class StopSignals:
    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.ignoring = False

    def handle(self, signum, frame) -> None:
        if not self.ignoring:
            self.ignoring = True
            raise StopRequested(signal.Signals(signum).name)

    def ignore(self) -> None:
        self.ignoring = True


@contextmanager
def signals_stop_the_stack() -> Iterator[StopSignals]:
    signals = StopSignals()
    previous = {sig: signal.signal(sig, signals.handle) for sig in StopSignals.SIGNALS}
    try:
        yield signals
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------- processes

@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    log_offset: int = 0  # where this run's lines start in the (appended) log

    def terminate(self) -> None:
        _signal_group(self.proc.pid, signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        """Wait for the leader until `deadline` (time.monotonic()), then SIGKILL its group; and
        SIGKILL whatever it left behind in the group either way."""
        try:
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{self.name} did not stop in time: killing it")
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)  # pgid == the leader's pid: every child starts its own session
    except (ProcessLookupError, PermissionError):
        pass


class Processes:
    """The processes the stack started, each the leader of its own process group, so that a
    Ctrl-C in the terminal reaches the stack only and the stack stops them in order."""

    def __init__(self, logs_dir: Path):
        self.logs_dir = logs_dir
        self.children: list[Child] = []

    def spawn(self, name: str, log_name: str, cmd: list[str], env: dict, cwd: Path) -> Child:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"{log_name}.log"
        with open(log_path, "ab") as log:
            log.write(f"\n=== aesemo stack: {' '.join(cmd)}\n".encode())
            log.flush()
            offset = log.tell()
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        child = Child(name, proc, log_path, offset)
        self.children.append(child)
        say(f"started {name} (pid {proc.pid}; log {log_path})")
        return child

    def check(self) -> None:
        """Raise when a child has exited: the stack is incomplete without it."""
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise StackError(f"{child.name} exited with code {code}; the end of {child.log_path}:\n"
                                 f"{child.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to every group at once, then wait for each (newest first), `timeout_s` in all."""
        start = time.monotonic()
        for child in self.children:
            child.terminate()
        for child in reversed(self.children):
            child.wait(start + timeout_s)
            say(f"stopped {child.name} ({time.monotonic() - start:.1f} s)")
        self.children.clear()


class EmbeddedRedis:
    """The data directory's Redis, used by this run (its backend and worker get its URL): at the
    end it stops unless another process of the data directory (a serve or worker started by
    hand) still uses it (backend/core/redis_connection.py)."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir

    def start(self) -> str:
        return lease_embedded_redis(self.data_dir)

    def stop(self) -> None:
        if release_embedded_redis(self.data_dir):
            say("stopped the embedded Redis")


def wait_for(what: str, processes: Processes, ready: Callable[[], bool], timeout_s: float, hint: str = "",
             report_every_s: float = 10.0) -> None:
    """Poll `ready` until it holds, saying how long it has been; fail when a child dies."""
    say(f"waiting for {what}{hint}")
    start = time.monotonic()
    next_report = start + report_every_s
    while not ready():
        processes.check()
        now = time.monotonic()
        if now - start > timeout_s:
            raise StackError(f"{what} not ready after {timeout_s:.0f} s; see the logs in {processes.logs_dir}")
        if now >= next_report:
            say(f"  still waiting for {what} ({now - start:.0f} s)")
            next_report += report_every_s
        time.sleep(0.5)
    say(f"{what} is ready ({time.monotonic() - start:.1f} s)")


def watch(processes: Processes) -> None:
    """Until a signal: every second, check that every piece is still running."""
    while True:
        processes.check()
        time.sleep(1.0)
