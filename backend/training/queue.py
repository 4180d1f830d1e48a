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
from rq.job import JobStatus

from model.limits import check_training_value, shown

from backend.core import keys
from backend.core.errors import InvalidInput
from backend.core.settings import Settings
from backend.jobs.connection import delete_if_equal, raw_connection, text_value
from backend.jobs.records import (cancel_job as cancel_any_job, describe_job, fetch_job, in_display_order,
                                  project_job, reap_abandoned, worker_alive)

log = logging.getLogger(__name__)

TRAIN_PARAMS = ("epochs", "batch_size", "lr", "backbone")
TRAIN_FUNCTION = "backend.training.job.train_project"


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
        pending = text_value(connection, keys.pending_job(project))
        if pending:
            job = fetch_job(connection, pending)
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
    job_id = text_value(connection, keys.running_job(project))
    if not job_id:
        return None
    reap_abandoned(training_queue(settings, connection))
    job = fetch_job(connection, job_id)
    if job is not None and job.get_status(refresh=True) == JobStatus.STARTED and worker_alive(connection, job):
        return job_id
    if delete_if_equal(connection, keys.running_job(project), job_id):
        log.info("cleared project %s's running job %s: it no longer runs", project, job_id)
    return None


REFUSED = "refused"
REFUSALS_KEPT = 20  # a project's refused requests kept for the jobs list, newest first


def project_jobs(settings: Settings, project: str, limit: int = 20) -> list[dict]:
    """The project's last jobs and refused requests: running, then queued, then the ended ones
    (refusals among them), newest first within each."""
    connection = raw_connection(settings)
    reap_abandoned(training_queue(settings, connection))
    ids = [i.decode() for i in connection.lrange(keys.job_history(project), 0, limit - 1)]
    jobs = [describe_job(j) for j in (fetch_job(connection, i) for i in ids) if j is not None]
    return in_display_order(jobs + refusals(connection, project))


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


def get_job(settings: Settings, project: str, job_id: str) -> dict:
    return describe_job(project_job(training_queue(settings), project, job_id))


def cancel_job(settings: Settings, project: str, job_id: str) -> dict:
    """A queued job is cancelled at once; a running one stops at its next training step."""
    return cancel_any_job(training_queue(settings), project, job_id, keys.pending_job(project))
