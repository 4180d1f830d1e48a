"""The settings a job runs with. `aesemo worker` hands over its own (its --device and --queue
included) before it takes jobs, and runs them in its own process (backend/training/worker.py),
so a job sees exactly the worker's settings; anywhere else (RQ's own workers, tests) a job reads
the environment."""
from __future__ import annotations

from backend.core.settings import Settings, load_settings

_worker_settings: Settings | None = None


def use_settings(settings: Settings | None) -> None:
    """The settings every later job of this process runs with (None: read the environment)."""
    global _worker_settings
    _worker_settings = settings


def job_settings() -> Settings:
    return _worker_settings if _worker_settings is not None else load_settings()
