"""Run the real backend (``aesemo serve``) as a subprocess for the end-to-end tests, and serve
test images over HTTP. Plain Python (no fixtures); the test modules make the fixtures.

``BackendProcess`` owns one data directory and its embedded Redis. ``stop()`` then ``start()``
again on the same object restarts the backend on the same port with the same data directory,
so the votes kept in the embedded Redis survive the restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
LABEL_CONFIG = (REPO_ROOT / "label_config" / "aesthetic_emotion.xml").read_text()
AESTHETIC = ["high", "low"]
EMOTION = ["amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"]

# Settings of the calling environment that must not reach the backend under test.
SCRUB_ENV = ("REDIS_URL", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER", "BASIC_AUTH_PASS",
              "PROMETHEUS_MULTIPROC_DIR", "PYTHONSTARTUP")


def aesemo_executable() -> str:
    local = Path(sys.executable).parent / "aesemo"
    if local.is_file():
        return str(local)
    repo = REPO_ROOT / ".venv" / "bin" / "aesemo"
    if repo.is_file():
        return str(repo)
    pytest.skip("no aesemo executable (pip install -e . into the test venv)")


@dataclass
class BackendProcess:
    """One ``aesemo serve`` subprocess: its URL, data dir, log, and a way to stop it."""

    name: str
    data_dir: Path
    port: int
    env: dict
    basic_auth: tuple[str, str] | None = None
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)
    started_in_s: float = 0.0

    def __post_init__(self):
        self.log_path = self.data_dir.parent / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """One HTTP call to the backend (Basic credentials added when it has some)."""
        s = requests.Session()
        s.trust_env = False
        if self.basic_auth:
            kwargs.setdefault("auth", self.basic_auth)
        kwargs.setdefault("timeout", 10)
        try:
            return s.request(method, self.url + path, **kwargs)
        finally:
            s.close()

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def start(self, timeout: float = 180.0) -> BackendProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [aesemo_executable(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--threads", "4"]
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:  # the child holds its own descriptor
            self.proc = subprocess.Popen(cmd, cwd=self.data_dir.parent, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = t0 + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"aesemo serve ({self.name}) exited with code {code}\n{self.log_tail()}")
            try:
                r = self.get("/health", timeout=2)
                if r.status_code == 200 and r.json().get("status") == "UP":
                    self.started_in_s = time.monotonic() - t0
                    return self
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"aesemo serve ({self.name}) not healthy after {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self, timeout: float = 40.0) -> None:
        from backend.core.redis_connection import stop_embedded_redis

        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()  # gunicorn: graceful shutdown of the master and its workers
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
            try:  # anything left in its process group (workers of a master that did not wait)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(timeout=10)
        stop_embedded_redis(self.data_dir)  # a daemon: not in the process group

    def redis(self) -> redis.Redis:
        from backend.core.redis_connection import embedded_socket_path

        return redis.Redis.from_url(f"unix://{embedded_socket_path(self.data_dir)}", decode_responses=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return f"--- {self.log_path.name} (tail) ---\n" + "\n".join(self.log_text().splitlines()[-lines:])


def run_worker(backend: BackendProcess, root: Path) -> str:
    """`aesemo worker --burst` on the backend's data directory and Redis, until the queues are
    empty; its log (asserted to end with exit 0)."""
    from backend.core.redis_connection import embedded_socket_path

    env = dict(backend.env, REDIS_URL=f"unix://{embedded_socket_path(backend.data_dir)}")
    log = root / "worker.log"
    with open(log, "ab") as out:
        worker = subprocess.Popen([aesemo_executable(), "worker", "--burst"], cwd=root, env=env,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        code = worker.wait(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        code = None
    text = log.read_text(errors="replace")
    assert code == 0, text[-6000:]
    return text


def make_pngs(folder: Path, colours: list[tuple[int, int, int]], prefix: str = "photo") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, colour in enumerate(colours):
        p = folder / f"{prefix}{i}.png"
        img = Image.new("RGB", (64, 48), colour)
        # a little structure, so the "photo" is not one flat colour
        for x in range(0, 64, 8):
            for y in range(48):
                img.putpixel((x, y), tuple(255 - c for c in colour))
        img.save(p)
        paths.append(p)
    return paths


def backend_env(data_dir: Path, label_studio_url: str, image_port: int | None = None,
                basic_auth: tuple[str, str] | None = None, **extra_env: str) -> dict:
    """The environment of one ``aesemo serve``: the caller's, less anything aimed at another
    backend, plus resnet18, ``data_dir``, LABEL_STUDIO_URL and the image server's host."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV and not k.startswith("AESEMO_")}
    env.update(
        AESEMO_DATA_DIR=str(data_dir),
        AESEMO_BACKBONE="resnet18",
        AESEMO_SUGGEST_UNTRAINED="1",  # the tests predict with the untrained base version
        AESEMO_CONTROL_FRACTION="0",   # every task of these tests is a suggested one
        AESEMO_SUGGESTION_GATE="0",    # their 1-epoch versions on a few labels show the loop, not evidence
        AESEMO_OFFLINE="1",  # no test reaches the internet for ImageNet weights
        LABEL_STUDIO_URL=label_studio_url,
        PYTHONUNBUFFERED="1",
    )
    if image_port is not None:
        env["AESEMO_ALLOWED_IMAGE_HOSTS"] = f"127.0.0.1:{image_port}"
    if basic_auth:
        env.update(BASIC_AUTH_USER=basic_auth[0], BASIC_AUTH_PASS=basic_auth[1])
    env.update(extra_env)
    return env
