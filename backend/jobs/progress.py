"""A running job's progress, written into its RQ meta, and the cancel request it checks for."""
from __future__ import annotations

import time

import redis
from rq.job import Job

from backend.core import keys


class JobCancelled(Exception):
    """Raised at a progress report after an admin asked to cancel the job."""


class Progress:
    """Writes progress into the job's meta (at most once a second) and notices cancellation."""

    def __init__(self, job: Job | None, connection: redis.Redis, lock):
        self.job, self.connection, self.lock = job, connection, lock
        self.last = 0.0

    def __call__(self, event: dict, force: bool = False) -> None:
        if self.job is None:
            return
        now = time.monotonic()
        # steps are throttled to one write a second, but an epoch's last step always lands, so
        # a fast epoch still leaves its step counts in the meta
        last_step = event.get("step") == event.get("steps")
        if not force and event.get("stage") == "training" and not last_step and now - self.last < 1.0:
            return
        self.last = now
        self.job.meta["progress"] = {**self.job.meta.get("progress", {}), **event, "updated_at": time.time()}
        self.job.save_meta()
        if self.lock is not None:
            self.lock.reacquire()
        # too late to cancel once the version is written and promoted
        if event.get("state") != "finished" and self.connection.exists(keys.job_cancel(self.job.id)):
            raise JobCancelled(f"job {self.job.id} cancelled by request")

    def state(self, state: str, **extra) -> None:
        self({"state": state, **extra}, force=True)
