"""The training queue on RQ: submitting (at most one running and one pending job per project,
a new request merges into the pending one), listing, describing and cancelling jobs.

The job itself is backend/training/job.py's `train_project`; a job names it by dotted path
(TRAIN_FUNCTION), so the queue need not import the training code and a worker imports it by name.
"""
from __future__ import annotations

import json
import logging
import os
import time

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from model.limits import check_training_value, shown

from backend.core import keys
from backend.core.errors import Conflict, InvalidInput, NotFound
from backend.core.redis_connection import redis_url
from backend.core.settings import Settings

log = logging.getLogger(__name__)

TRAIN_PARAMS = ("epochs", "batch_size", "lr", "backbone")
TRAIN_FUNCTION = "backend.training.job.train_project"


def raw_connection(settings: Settings) -> redis.Redis:
    """RQ stores pickled data: it needs a connection that does not decode responses."""
    return redis.Redis.from_url(redis_url(settings))


def training_queue(settings: Settings, connection: redis.Redis | None = None) -> Queue:
    return Queue(settings.training_queue, connection=connection or raw_connection(settings))





def check_params(params) -> dict:
    """The request's training parameters, each checked against its documented range
    (model/limits.py); InvalidInput naming the field and the range otherwise."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput("training parameters must be a JSON object")
    unknown = set(params) - set(TRAIN_PARAMS)
    if unknown:
        raise InvalidInput(f"unknown training parameters {sorted(unknown)}; known: {sorted(TRAIN_PARAMS)}")
    try:
        return {name: _check_backbone(value) if name == "backbone" else check_training_value(name, value)
                for name, value in params.items()}
    except ValueError as exc:
        raise InvalidInput(f"training parameter {exc}") from None


def _check_backbone(value) -> str:
    from model.backbones import SPECS
    if not isinstance(value, str) or value not in SPECS:
        raise ValueError(f"backbone must be one of {sorted(SPECS)}, got {shown(value)}")
    return value


def submit_training(settings: Settings, project: str, reason: str, params: dict | None = None) -> dict:
    """Queue a training job, or merge the request into the project's pending one."""
    params = check_params(params)
    connection = raw_connection(settings)
    request = {"reason": reason, "params": params, "at": time.time()}
    with connection.lock(keys.submit_lock(project), timeout=10, blocking_timeout=10):
        pending = _get(connection, keys.pending_job(project))
        if pending:
            job = _fetch(connection, pending)
            if job is not None and job.get_status(refresh=True) == JobStatus.QUEUED:
                job.meta["requests"].append(request)
                job.meta["params"].update(params)  # the latest request's parameters win
                job.save_meta()
                return {"job_id": job.id, "state": "queued", "merged": True,
                        "message": f"merged into pending job {job.id} ({len(job.meta['requests'])} requests)"}
        job_id = f"train-{project}-{time.strftime('%Y%m%d%H%M%S')}-{os.urandom(3).hex()}"
        job = training_queue(settings, connection).enqueue_call(
            TRAIN_FUNCTION, args=(project,), job_id=job_id, timeout=settings.job_timeout_s,
            result_ttl=30 * 86400, failure_ttl=30 * 86400, description=f"train project {project}",
            meta={"project": project, "params": dict(params), "requests": [request],
                  "progress": {"state": "queued"}})
        connection.set(keys.pending_job(project), job.id)
        connection.lpush(keys.job_history(project), job.id)
        running = _running_job(settings, connection, project)
    message = f"queued job {job.id}" + (f" to run after {running}" if running else "")
    return {"job_id": job.id, "state": "queued", "merged": False, "message": message}


def _running_job(settings: Settings, connection: redis.Redis, project: str) -> str | None:
    """The project's running job, when it really runs: RQ says started and its worker's key
    lives. The running key of a job whose worker was killed (no `finally` ran) is cleared."""
    job_id = _get(connection, keys.running_job(project))
    if not job_id:
        return None
    _reap_abandoned(settings, connection)
    job = _fetch(connection, job_id)
    if job is not None and job.get_status(refresh=True) == JobStatus.STARTED and _worker_alive(connection, job):
        return job_id
    if connection.eval(_DELETE_IF_EQUAL, 1, keys.running_job(project), job_id):
        log.info("cleared project %s's running job %s: it no longer runs", project, job_id)
    return None


def _worker_alive(connection: redis.Redis, job: Job) -> bool:
    from rq.worker import Worker
    # a worker's key expires soon after its heartbeats stop
    return not job.worker_name or bool(connection.exists(Worker.redis_worker_namespace_prefix + job.worker_name))


def _get(connection: redis.Redis, key: str) -> str | None:
    value = connection.get(key)
    return value.decode() if isinstance(value, bytes) else value


def _fetch(connection: redis.Redis, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None
    except ValueError:  # not an id RQ could have made ("a b", "%00"): no such job either
        return None


CANCELLED = "cancelled"
REFUSED = "refused"
REFUSALS_KEPT = 20  # a project's refused requests kept for the jobs list, newest first


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
    (RQ says `failed`: the job raised JobCancelled, backend/training/job.py)."""
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


def _reap_abandoned(settings: Settings, connection: redis.Redis) -> None:
    """Let RQ move jobs whose worker stopped heartbeating to the failed registry now, rather
    than at the next worker's maintenance (every 10 minutes)."""
    try:
        training_queue(settings, connection).started_job_registry.cleanup()
    except redis.RedisError as exc:
        log.warning("could not clean the started-job registry: %s", exc)


def _iso(moment) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def _last_line(text: str | None) -> str | None:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def project_jobs(settings: Settings, project: str, limit: int = 20) -> list[dict]:
    """The project's last jobs and refused requests: running, then queued, then the ended ones
    (refusals among them), newest first within each."""
    connection = raw_connection(settings)
    _reap_abandoned(settings, connection)
    ids = [i.decode() for i in connection.lrange(keys.job_history(project), 0, limit - 1)]
    jobs = [describe_job(j) for j in (_fetch(connection, i) for i in ids) if j is not None]
    return in_display_order(jobs + refusals(connection, project))


_ACTIVE_RANK = {JobStatus.STARTED.value: 0, JobStatus.QUEUED.value: 1, JobStatus.DEFERRED.value: 1,
                JobStatus.SCHEDULED.value: 1}


def in_display_order(jobs: list[dict]) -> list[dict]:
    def newest(job: dict) -> str:
        return job.get("ended_at") or job.get("started_at") or job.get("enqueued_at") or ""
    by_time = sorted(jobs, key=newest, reverse=True)  # stable: ties keep the history's order
    return sorted(by_time, key=lambda job: _ACTIVE_RANK.get(job["status"], 2))


def record_refusal(settings: Settings, project: str, requested_by: str, reason: str) -> dict:
    """Keeps a refused training request for the jobs list (the last REFUSALS_KEPT); returns it
    as the list shows it."""
    at = time.time()
    entry = {"id": f"refused-{project}-{time.strftime('%Y%m%d%H%M%S', time.gmtime(at))}-{os.urandom(3).hex()}",
             "at": at, "requested_by": requested_by, "reason": reason}
    connection = raw_connection(settings)
    with connection.pipeline() as pipe:
        pipe.lpush(keys.refused_requests(project), json.dumps(entry))
        pipe.ltrim(keys.refused_requests(project), 0, REFUSALS_KEPT - 1)
        pipe.execute()
    return _describe_refusal(project, entry)


def refusals(connection: redis.Redis, project: str) -> list[dict]:
    entries = []
    for raw in connection.lrange(keys.refused_requests(project), 0, REFUSALS_KEPT - 1):
        try:
            entries.append(_describe_refusal(project, json.loads(raw)))
        except (ValueError, TypeError, KeyError):
            log.warning("skipped a malformed refused-request entry of project %s", project)
    return entries


def _describe_refusal(project: str, entry: dict) -> dict:
    """A refusal in a job's shape, so the jobs list, the CLI and the admin page read both alike."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry["at"]))
    return {"job_id": entry["id"], "project": project, "status": REFUSED, "enqueued_at": when, "started_at": None,
            "ended_at": when, "params": None, "requests": 1, "progress": None,
            "requested_by": entry["requested_by"], "reason": entry["reason"], "refused_at": when,
            "error": entry["reason"]}


def _project_job(settings: Settings, project: str, job_id: str) -> tuple[redis.Redis, Job]:
    """The job, after abandoned jobs are marked failed; 404 unless it belongs to `project`."""
    connection = raw_connection(settings)
    _reap_abandoned(settings, connection)
    job = _fetch(connection, job_id)
    if job is None or job.meta.get("project") != project:
        raise NotFound(f"project {project} has no job {job_id[:100]!r}")
    return connection, job


def get_job(settings: Settings, project: str, job_id: str) -> dict:
    return describe_job(_project_job(settings, project, job_id)[1])


def cancel_job(settings: Settings, project: str, job_id: str) -> dict:
    """A queued job is cancelled at once; a running one stops at its next training step."""
    connection, job = _project_job(settings, project, job_id)
    status = job.get_status(refresh=True)
    if status == JobStatus.QUEUED:
        job.cancel()
        job.meta["error"] = "cancelled before it started"
        job.save_meta()
        if _get(connection, keys.pending_job(project)) == job.id:
            connection.delete(keys.pending_job(project))
    elif status == JobStatus.STARTED:
        connection.set(keys.job_cancel(job.id), 1, ex=86400)
    else:
        raise Conflict(f"job {job_id} is {status.value}; only queued or running jobs can be cancelled")
    return describe_job(job)



_DELETE_IF_EQUAL = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
