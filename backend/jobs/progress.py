"""A running job's progress, written into its RQ meta, and the cancel request it checks for.

`Progress.state` merges each report into the meta (a refresh job's counts accumulate there).
`Progress.stage` starts a named stage of a job: the previous stage's time is recorded in
`stages`, and the previous stage's own progress (done, total, ETA) is dropped, so a stage never
shows another stage's bar or ETA.
"""
from __future__ import annotations

import time

import redis
from rq.job import Job

from backend.core import keys

# a stage's own progress: dropped when the next stage starts
STAGE_FIELDS = ("title", "done", "total", "unit", "eta_s", "eta_at_most", "stage_started_at")


class JobCancelled(Exception):
    """Raised at a progress report after an admin asked to cancel the job."""


class Progress:
    """Writes progress into the job's meta (at most once a second) and notices cancellation."""

    def __init__(self, job: Job | None, connection: redis.Redis, lock):
        self.job, self.connection, self.lock = job, connection, lock
        self.last = 0.0
        self.current: dict | None = None     # the running stage: name, title, started (monotonic)
        self.stages: list[dict] = []         # the ended stages: name, title, seconds

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
        self.write({**self.job.meta.get("progress", {}), **event})
        # too late to cancel once the version is written and promoted, or the job has failed
        if event.get("state") not in ("finished", "failed") and self.connection.exists(keys.job_cancel(self.job.id)):
            raise JobCancelled(f"job {self.job.id} cancelled by request")

    def write(self, progress: dict) -> None:
        self.job.meta["progress"] = {**progress, "updated_at": time.time()}
        self.job.save_meta()
        if self.lock is not None:
            self.lock.reacquire()

    def state(self, state: str, **extra) -> None:
        self({"state": state, **extra}, force=True)

    def stage(self, name: str, title: str, **extra) -> None:
        """A new stage, `name` for programs and `title` for the admin ("fetching 96 images"): the
        previous stage's seconds recorded, its own progress fields dropped."""
        self.end_stage()
        self.current = {"name": name, "title": title, "started": time.monotonic()}
        if self.job is not None:
            kept = {k: v for k, v in self.job.meta.get("progress", {}).items() if k not in STAGE_FIELDS}
            self.write({**kept, "stages": self.stages})
        self({"state": name, "title": title, "stage_started_at": time.time(), **extra}, force=True)

    def end_stage(self) -> None:
        """Records the running stage's seconds in `stages` (nothing runs afterwards)."""
        if self.current is not None:
            self.stages.append({"name": self.current["name"], "title": self.current["title"],
                                "seconds": round(time.monotonic() - self.current["started"], 3)})
            self.current = None

    def counted(self, done: int, total: int, unit: str) -> None:
        """The running stage's own progress as a count, with an ETA from its pace so far
        (none before the first item: no pace to go by)."""
        if done < total and time.monotonic() - self.last < 1.0:
            return
        event = {"done": done, "total": total, "unit": unit}
        if self.current is not None and done:
            elapsed = time.monotonic() - self.current["started"]
            event["eta_s"] = elapsed / done * (total - done)
        self(event, force=done == total)

    def finish(self, state: str, **extra) -> None:
        """The job's end: the last stage's time recorded, nothing left to wait for."""
        self.end_stage()
        if self.job is not None:
            kept = {k: v for k, v in self.job.meta.get("progress", {}).items() if k not in STAGE_FIELDS}
            self.write({**kept, "stages": self.stages})
        self({"state": state, **extra}, force=True)
