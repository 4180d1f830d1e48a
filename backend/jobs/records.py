"""Reading and cancelling RQ jobs of any kind (training, prediction refresh): a job's record as
the jobs list, the CLI and the admin page show it, and the abandoned-job clean-up."""
from __future__ import annotations

import logging

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from backend.core import keys
from backend.core.errors import Conflict, NotFound
from backend.jobs.connection import delete_if_equal

log = logging.getLogger(__name__)

CANCELLED = "cancelled"
_ACTIVE_RANK = {JobStatus.STARTED.value: 0, JobStatus.QUEUED.value: 1, JobStatus.DEFERRED.value: 1,
                JobStatus.SCHEDULED.value: 1}


def fetch_job(connection: redis.Redis, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None
    except ValueError:  # not an id RQ could have made ("a b", "%00"): no such job either
        return None


def worker_alive(connection: redis.Redis, job: Job) -> bool:
    from rq.worker import Worker
    # a worker's key expires soon after its heartbeats stop
    return not job.worker_name or bool(connection.exists(Worker.redis_worker_namespace_prefix + job.worker_name))


def reap_abandoned(queue: Queue) -> None:
    """Let RQ move jobs whose worker stopped heartbeating to the failed registry now, rather
    than at the next worker's maintenance (every 10 minutes)."""
    try:
        queue.started_job_registry.cleanup()
    except redis.RedisError as exc:
        log.warning("could not clean the started-job registry: %s", exc)


def describe_job(job: Job) -> dict:
    status = job.get_status(refresh=True)
    shown_status = CANCELLED if _was_cancelled(job, status) else str(status.value if status else None)
    info = {"job_id": job.id, "project": job.meta.get("project"), "status": shown_status,
            "enqueued_at": _iso(job.enqueued_at), "started_at": _iso(job.started_at),
            "ended_at": _iso(job.ended_at), "params": job.meta.get("params"),
            "requests": len(job.meta.get("requests", [])), "progress": job.meta.get("progress")}
    if status == JobStatus.FINISHED:
        info["result"] = job.return_value()
    if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
        failure = _failure_text(job)
        info["error"] = job.meta.get("error") or _abandoned(failure, job) or _last_line(failure) or str(status.value)
    return info


def _was_cancelled(job: Job, status) -> bool:
    """Cancelled before it started (RQ's `canceled`), or stopped at a step by a cancel request
    (RQ says `failed`: the job raised backend/jobs/progress.py's JobCancelled)."""
    return status == JobStatus.CANCELED or (
        status == JobStatus.FAILED and str(job.meta.get("error") or "").startswith("JobCancelled"))


def _failure_text(job: Job) -> str | None:
    """The traceback (or RQ's note) of the job's failed run; `job.exc_info` is deprecated in RQ 2+."""
    from rq.results import Result
    result = job.latest_result()
    if result is not None and result.type == Result.Type.FAILED:
        return result.exc_string
    return getattr(job, "_exc_info", None)


def _abandoned(failure: str | None, job: Job) -> str | None:
    """RQ's note on a job whose worker died under it, said plainly."""
    if "AbandonedJobError" not in (failure or ""):
        return None
    state = (job.meta.get("progress") or {}).get("state")
    return (f"the worker running this job died (killed or crashed) while it was in state {state!r}; "
            f"RQ marked it abandoned (AbandonedJobError)")


def _iso(moment) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def _last_line(text: str | None) -> str | None:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def in_display_order(jobs: list[dict]) -> list[dict]:
    """Running, then queued, then the ended ones, newest first within each."""
    def newest(job: dict) -> str:
        return job.get("ended_at") or job.get("started_at") or job.get("enqueued_at") or ""
    by_time = sorted(jobs, key=newest, reverse=True)  # stable: ties keep the history's order
    return sorted(by_time, key=lambda job: _ACTIVE_RANK.get(job["status"], 2))


def project_job(queue: Queue, project: str, job_id: str) -> Job:
    """The job, after abandoned jobs are marked failed; 404 unless it belongs to `project`."""
    reap_abandoned(queue)
    job = fetch_job(queue.connection, job_id)
    if job is None or job.meta.get("project") != project:
        raise NotFound(f"project {project} has no job {job_id[:100]!r}")
    return job


def cancel_job(queue: Queue, project: str, job_id: str, pending_key: str) -> dict:
    """A queued job is cancelled at once (and leaves `pending_key` if it was the pending job);
    a running one stops at its next progress report."""
    job = project_job(queue, project, job_id)
    status = job.get_status(refresh=True)
    if status == JobStatus.QUEUED:
        job.cancel()
        job.meta["error"] = "cancelled before it started"
        job.save_meta()
        delete_if_equal(queue.connection, pending_key, job.id)
    elif status == JobStatus.STARTED:
        queue.connection.set(keys.job_cancel(job.id), 1, ex=86400)
    else:
        raise Conflict(f"job {job_id} is {status.value}; only queued or running jobs can be cancelled")
    return describe_job(job)
