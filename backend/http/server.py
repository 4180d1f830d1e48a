"""`aesemo serve`: the app under gunicorn (threads share one model per worker process), its
requests read by waitress in each worker (backend/http/worker.py)."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from gunicorn.app.base import BaseApplication

from backend.core.redis_connection import redis_url
from backend.core.settings import Settings, load_settings


class _Gunicorn(BaseApplication):
    """gunicorn forks its workers from this process: each gets `settings` as they are here."""

    def __init__(self, options: dict, settings: Settings):
        self.options, self.settings = options, settings
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from backend.http.app import create_app
        return create_app(self.settings)


def _child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def _worker_exit(server, worker):
    # the hot swap's threads end between two notices rather than mid-load
    app = getattr(worker, "wsgi", None)
    backend = getattr(app, "extensions", {}).get("aesemo")
    if backend is not None:
        backend.close()


def replica_dir() -> Path:
    """This start's own folder (metrics files, the control socket), removed when the gunicorn
    master exits; its forked workers inherit the exit hook and must not run it."""
    folder = Path(tempfile.mkdtemp(prefix="aesemo-serve-"))
    master = os.getpid()

    def remove() -> None:
        if os.getpid() == master:
            shutil.rmtree(folder, ignore_errors=True)
    atexit.register(remove)
    return folder


def serve(host: str, port: int, workers: int, threads: int, timeout_s: int = 120) -> None:
    from backend.serving.registry import prepare_start  # imports torch: only here, not for the app's imports
    settings = load_settings()
    # before gunicorn: a bad AESEMO_PRETRAINED stops the start with one line, not every /predict
    prepare_start(settings)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    own = replica_dir()
    # Every worker writes its metrics here so /metrics adds them up; it must be set before
    # any worker imports prometheus_client. A new folder per start: no old run's numbers, and
    # no other replica's files (several may share a data directory).
    metrics_dir = own / "prometheus"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    # start the embedded Redis once here rather than racing in every worker
    settings = replace(settings, redis_url=redis_url(settings))
    _Gunicorn({
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        # waitress reads each request whole before a thread sees it (backend/http/worker.py)
        "worker_class": "backend.http.worker.BufferedWorker",
        # seconds an idle connection is kept open between requests
        "keepalive": 5,
        # /predict of a large body on a CPU can take a while; Label Studio waits 100 s
        "timeout": timeout_s,
        "graceful_timeout": 30,
        "accesslog": "-",
        # the access log shows paths only: no query strings, headers or bodies (tokens)
        "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms',
        "child_exit": _child_exit,
        "worker_exit": _worker_exit,
        # one control socket per start, so two backends on one host never share one
        "control_socket": str(own / "gunicorn.ctl"),
    }, settings).run()
