"""The `predict` queue on RQ: prediction-refresh jobs (backend/serving/refresh.py), one queued
and one running per project at most. A job refreshes with the version that is current when it
runs, so a newer promotion needs no job of its own: it merges into the pending one. A request for
some tasks (from `/predict`) merges its ids; a request for the whole project widens the pending
job to all of it.
"""
from __future__ import annotations

import logging
import os
import time

import redis
from rq import Queue
from rq.job import JobStatus

from backend.core import keys
from backend.core.settings import Settings
from backend.jobs.connection import raw_connection, text_value
from backend.jobs.records import cancel_job, describe_job, fetch_job

log = logging.getLogger(__name__)

REFRESH_FUNCTION = "backend.serving.refresh.refresh_project"
REFRESH_HISTORY = 50        # refresh job ids kept per project
REFRESH_TIMEOUT_S = 6 * 3600


def predict_queue(settings: Settings, connection: redis.Redis | None = None) -> Queue:
    return Queue(settings.predict_queue, connection=connection or raw_connection(settings))


def submit_refresh(settings: Settings, project: str, reason: str, task_ids: list | None = None) -> dict:
    """Queue a refresh of the project's unlabelled tasks (all of them, or `task_ids`), or merge
    the request into the pending one."""
    connection = raw_connection(settings)
    wanted = None if task_ids is None else sorted({str(t) for t in task_ids})
    with connection.lock(keys.refresh_submit_lock(project), timeout=10, blocking_timeout=10):
        job = fetch_job(connection, text_value(connection, keys.refresh_pending(project)) or "")
        if job is not None and job.get_status(refresh=True) == JobStatus.QUEUED:
            _merge(job, reason, wanted)
            return {"job_id": job.id, "state": "queued", "merged": True}
        job_id = f"refresh-{project}-{time.strftime('%Y%m%d%H%M%S')}-{os.urandom(3).hex()}"
        job = predict_queue(settings, connection).enqueue_call(
            REFRESH_FUNCTION, args=(project,), job_id=job_id, timeout=REFRESH_TIMEOUT_S,
            result_ttl=7 * 86400, failure_ttl=7 * 86400, description=f"refresh predictions of project {project}",
            meta={"project": project, "kind": "refresh", "task_ids": wanted, "reasons": [reason],
                  "progress": {"state": "queued"}})
        pipe = connection.pipeline()
        pipe.set(keys.refresh_pending(project), job.id)
        pipe.lpush(keys.refresh_jobs(project), job.id)
        pipe.ltrim(keys.refresh_jobs(project), 0, REFRESH_HISTORY - 1)
        pipe.execute()
    return {"job_id": job.id, "state": "queued", "merged": False}


def _merge(job, reason: str, wanted: list | None) -> None:
    queued = job.meta.get("task_ids")
    job.meta["task_ids"] = None if queued is None or wanted is None else sorted(set(queued) | set(wanted))
    job.meta["reasons"] = (job.meta.get("reasons") or [])[-19:] + [reason]
    job.save_meta()


def try_submit_refresh(settings: Settings, project: str, reason: str, task_ids: list | None = None) -> dict | None:
    """submit_refresh for callers whose own work is done (a promotion, a /setup, a /predict
    answer): a refresh that cannot be queued is logged, never their failure."""
    try:
        return submit_refresh(settings, project, reason, task_ids)
    except (redis.RedisError, redis.exceptions.LockError) as exc:
        log.warning("project %s: prediction refresh (%s) not queued: %s", project, reason, exc)
        return None


def refresh_jobs(settings: Settings, project: str, limit: int = 5) -> list[dict]:
    connection = raw_connection(settings)
    ids = [i.decode() for i in connection.lrange(keys.refresh_jobs(project), 0, limit - 1)]
    jobs = [fetch_job(connection, i) for i in ids]
    return [{**describe_job(j), "reasons": j.meta.get("reasons"), "task_ids": _count(j.meta.get("task_ids"))}
            for j in jobs if j is not None]


def _count(task_ids: list | None) -> int | str:
    return "all" if task_ids is None else len(task_ids)


def cancel_refresh(settings: Settings, project: str, job_id: str) -> dict:
    """Like a training job: a queued one is cancelled at once, a running one at its next step."""
    return cancel_job(predict_queue(settings), project, job_id, keys.refresh_pending(project))
