"""Training jobs on RQ: submitting (at most one running and one pending job per project),
the job function itself, progress in the job's meta, and cancelling.

The job function is a plain function (`train_project`); a worker imports it by name.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import redis
from rq import Queue, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from model.errors import VersionError
from model.limits import check_training_value, shown
from model.network import NetConfig
from model.pipeline import train_version
from model.train import TrainConfig
from model.version import read_meta

from backend.core.errors import RequestError
from backend.training.image_cache import cached_training_image, training_image_cache
from backend.fetch.fetcher import ImageFetchError, ImageFetcher
from backend.labelstudio.label_config import parse_label_config
from backend.votes.project_consensus import ProjectConsensus
from backend.labelstudio.projects import ProjectStore
from backend.core.redis_connection import redis_url
from backend.serving.registry import (ensure_base_version, project_versions_dir, refusal, resolve_current,
                       set_current_version)
from backend.training.report import write_report
from backend.votes.resync import project_studio, resync
from backend.core.settings import Settings, load_settings

log = logging.getLogger(__name__)

TRAIN_PARAMS = ("epochs", "batch_size", "lr", "backbone")


class JobCancelled(Exception):
    pass


def raw_connection(settings: Settings) -> redis.Redis:
    """RQ stores pickled data: it needs a connection that does not decode responses."""
    return redis.Redis.from_url(redis_url(settings))


def training_queue(settings: Settings, connection: redis.Redis | None = None) -> Queue:
    return Queue(settings.training_queue, connection=connection or raw_connection(settings))


def _pending_key(project: str) -> str:
    return f"aesemo:p:{project}:job:pending"


def _running_key(project: str) -> str:
    return f"aesemo:p:{project}:job:running"


def _history_key(project: str) -> str:
    return f"aesemo:p:{project}:jobs"


def check_params(params) -> dict:
    """The request's training parameters, each checked against its documented range
    (model/limits.py); RequestError naming the field and the range otherwise."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError("training parameters must be a JSON object")
    unknown = set(params) - set(TRAIN_PARAMS)
    if unknown:
        raise RequestError(f"unknown training parameters {sorted(unknown)}; known: {sorted(TRAIN_PARAMS)}")
    try:
        return {name: _check_backbone(value) if name == "backbone" else check_training_value(name, value)
                for name, value in params.items()}
    except ValueError as exc:
        raise RequestError(f"training parameter {exc}") from None


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
    with connection.lock(f"aesemo:p:{project}:submit", timeout=10, blocking_timeout=10):
        pending = _get(connection, _pending_key(project))
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
            train_project, args=(project,), job_id=job_id, timeout=settings.job_timeout_s,
            result_ttl=30 * 86400, failure_ttl=30 * 86400, description=f"train project {project}",
            meta={"project": project, "params": dict(params), "requests": [request],
                  "progress": {"state": "queued"}})
        connection.set(_pending_key(project), job.id)
        connection.lpush(_history_key(project), job.id)
        running = _running_job(settings, connection, project)
    message = f"queued job {job.id}" + (f" to run after {running}" if running else "")
    return {"job_id": job.id, "state": "queued", "merged": False, "message": message}


def _running_job(settings: Settings, connection: redis.Redis, project: str) -> str | None:
    """The project's running job, when it really runs: RQ says started and its worker's key
    lives. The running key of a job whose worker was killed (no `finally` ran) is cleared."""
    job_id = _get(connection, _running_key(project))
    if not job_id:
        return None
    _reap_abandoned(settings, connection)
    job = _fetch(connection, job_id)
    if job is not None and job.get_status(refresh=True) == JobStatus.STARTED and _worker_alive(connection, job):
        return job_id
    if connection.eval(_DELETE_IF_EQUAL, 1, _running_key(project), job_id):
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


def describe_job(job: Job) -> dict:
    status = job.get_status(refresh=True)
    info = {"job_id": job.id, "project": job.meta.get("project"), "status": str(status.value if status else None),
            "enqueued_at": _iso(job.enqueued_at), "started_at": _iso(job.started_at),
            "ended_at": _iso(job.ended_at), "params": job.meta.get("params"),
            "requests": len(job.meta.get("requests", [])), "progress": job.meta.get("progress")}
    if status == JobStatus.FINISHED:
        info["result"] = job.return_value()
    if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
        failure = _failure_text(job)
        info["error"] = job.meta.get("error") or _abandoned(failure, job) or _last_line(failure) or str(status.value)
    return info


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
    connection = raw_connection(settings)
    _reap_abandoned(settings, connection)
    ids = [i.decode() for i in connection.lrange(_history_key(project), 0, limit - 1)]
    jobs = [_fetch(connection, i) for i in ids]
    return [describe_job(j) for j in jobs if j is not None]


def _project_job(settings: Settings, project: str, job_id: str) -> tuple[redis.Redis, Job]:
    """The job, after abandoned jobs are marked failed; 404 unless it belongs to `project`."""
    connection = raw_connection(settings)
    _reap_abandoned(settings, connection)
    job = _fetch(connection, job_id)
    if job is None or job.meta.get("project") != project:
        raise RequestError(f"project {project} has no job {job_id[:100]!r}", status=404)
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
        if _get(connection, _pending_key(project)) == job.id:
            connection.delete(_pending_key(project))
    elif status == JobStatus.STARTED:
        connection.set(f"aesemo:job:{job.id}:cancel", 1, ex=86400)
    else:
        raise RequestError(f"job {job_id} is {status.value}; only queued or running jobs can be cancelled",
                           status=409)
    return describe_job(job)


# -- the job -------------------------------------------------------------------------------

class _Progress:
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
        if event.get("state") != "finished" and self.connection.exists(f"aesemo:job:{self.job.id}:cancel"):
            raise JobCancelled(f"job {self.job.id} cancelled by request")

    def state(self, state: str, **extra) -> None:
        self({"state": state, **extra}, force=True)


def train_project(project: str) -> dict:
    """Resync, snapshot, fetch images into the cache, fine-tune, evaluate, write a version and
    apply the promotion rule. Runs inside an RQ worker."""
    settings = load_settings()
    job = get_current_job()
    connection = job.connection if job else raw_connection(settings)
    params = dict(job.meta.get("params", {})) if job else {}
    # One training per project at a time, even with several workers. The lock holds the job's
    # id and lasts as long as a job may run; a holder whose worker died (RQ marks its job failed
    # once its heartbeats stop) is noticed while waiting and its lock released.
    lock = connection.lock(_lock_key(project), timeout=settings.job_timeout_s + 60)
    _acquire_training_lock(settings, connection, lock, project, job.id if job else f"local-{os.getpid()}")
    try:
        if job:
            if _get(connection, _pending_key(project)) == job.id:
                connection.delete(_pending_key(project))
            connection.set(_running_key(project), job.id)
        progress = _Progress(job, connection, lock)
        try:
            return _train(settings, project, params, progress, job.id if job else "local")
        except Exception as exc:
            if job:
                job.meta["error"] = f"{type(exc).__name__}: {exc}"
                job.meta["progress"] = {**job.meta.get("progress", {}), "state": "failed"}
                job.save_meta()
            raise
    finally:
        if job and _get(connection, _running_key(project)) == job.id:
            connection.delete(_running_key(project))
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass


def _lock_key(project: str) -> str:
    return f"aesemo:p:{project}:training"


_DELETE_IF_EQUAL = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def _acquire_training_lock(settings: Settings, connection: redis.Redis, lock, project: str, token: str) -> None:
    deadline = time.monotonic() + settings.job_timeout_s
    while not lock.acquire(blocking=False, token=token):
        holder = _get(connection, _lock_key(project))
        if holder and holder.startswith("train-"):
            _reap_abandoned(settings, connection)
            held = _fetch(connection, holder)
            if (held is None or held.get_status(refresh=True) != JobStatus.STARTED) and \
                    connection.eval(_DELETE_IF_EQUAL, 1, _lock_key(project), holder):
                log.warning("released project %s's training lock: its holder %s is no longer running", project, holder)
                continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"project {project} is still training elsewhere ({holder})")
        time.sleep(1.0)


def _train(settings: Settings, project: str, params: dict, progress: _Progress, job_id: str) -> dict:
    client = redis.Redis.from_url(redis_url(settings), decode_responses=True)
    context = ProjectStore(client).get(project)
    if not context.label_config:
        raise RequestError(f"project {project} has no label config (connect the backend to it first)")
    labels = parse_label_config(context.label_config, settings.aesthetic_control, settings.emotion_control)
    consensus = ProjectConsensus(client, settings)
    studio = project_studio(settings, context)

    resynced = None
    if settings.resync_before_snapshot and studio and studio.token:
        progress.state("resync")
        try:
            resynced = resync(consensus, project, labels, settings, studio)
        except RequestError as exc:  # keep training on the votes we have
            log.warning("resync before training failed: %s", exc)
            resynced = {"error": str(exc)}
    progress.state("snapshot")
    snapshot = consensus.snapshot(project, labels)
    if snapshot["rows"] < settings.min_training_labels:
        raise RequestError(f"project {project} has {snapshot['rows']} consensus-labelled images; training "
                           f"needs at least {settings.min_training_labels} (AESEMO_MIN_TRAINING_LABELS)")

    progress.state("images", total=snapshot["rows"])
    started = time.monotonic()
    # the fetcher picks each image's token itself (backend/labelstudio/tokens.py): what goes in
    # is /setup's pair as stored, never the operator's key
    rows, failed = _cache_images(settings, snapshot["path"], context.hostname, context.access_token)
    image_seconds = time.monotonic() - started
    total = len(rows) + len(failed)
    if total == 0 or len(failed) / total > settings.max_failed_image_fraction:
        raise RequestError(f"{len(failed)} of {total} images could not be fetched (over the allowed "
                           f"{settings.max_failed_image_fraction:.0%}); first: {failed[0] if failed else '-'}")

    job_dir = Path(settings.data_dir) / "projects" / project / "jobs" / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    manifest = job_dir / "manifest.jsonl"
    header = {"classes": {"aesthetic": list(labels.aesthetic_classes), "emotion": list(labels.emotion_classes)}}
    manifest.write_text("\n".join(json.dumps(r) for r in [header] + rows) + "\n", encoding="utf-8")

    parent, parent_meta = _parent(replace(settings, backbone=params.get("backbone", settings.backbone)),
                                  client, project, header["classes"])

    versions = project_versions_dir(settings, project)
    versions.mkdir(parents=True, exist_ok=True)
    name = f"v{len(list(versions.glob('v*'))) + 1:04d}-{time.strftime('%Y%m%d%H%M%S')}"
    staging = versions / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    config = TrainConfig(epochs=params.get("epochs", settings.train_epochs),
                         batch_size=params.get("batch_size", settings.train_batch_size),
                         lr=params.get("lr", settings.train_lr), device=settings.train_device,
                         patience=settings.train_patience,
                         train_size=settings.train_image_size, crop_size=settings.train_crop_size)
    progress.state("training", epochs=config.epochs)
    meta = train_version(manifest, staging, NetConfig(), config, init_from=parent.folder, progress=progress,
                         extra_meta={"parent_version": parent.name, "snapshot_id": snapshot["id"],
                                     "snapshot_sha256": snapshot["sha256"], "job_id": job_id,
                                     "images": {"used": len(rows), "failed": len(failed)}})
    write_report(staging, meta)
    os.replace(staging, versions / name)  # a version folder appears whole or not at all

    promoted, why = _promotion(settings, parent_meta, meta, versions / name)
    if promoted:
        set_current_version(client, project, name)
    progress.state("finished", version=name, promoted=promoted)
    return {"version": name, "promoted": promoted, "promotion": why, "parent": parent.name,
            "metrics": {t: None if m is None else {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
                        for t, m in meta["metrics"].items()},
            "snapshot": {k: snapshot[k] for k in ("id", "sha256", "rows")},
            "images": {"used": len(rows), "failed": len(failed), "failures": failed[:20],
                       "seconds": round(image_seconds, 3)},
            "training_seconds": round(meta["training"]["seconds"], 3), "device": meta["training"]["device"],
            "resync": resynced}


def _parent(settings: Settings, client: redis.Redis, project: str, classes: dict):
    """The version to fine-tune and its metadata: the current one, or a base version when the
    label config changed since (other classes) or the current one's model.json is malformed."""
    parent = resolve_current(client, settings, project, classes)
    try:
        parent_meta = read_meta(parent.folder)
    except VersionError as exc:
        log.warning("project %s: current version %s skipped (%s); training starts from a base version",
                    project, parent.name, exc)
        parent_meta = {}
    if parent_meta.get("classes") != classes:
        parent = ensure_base_version(settings, classes)
        parent_meta = read_meta(parent.folder)
    return parent, parent_meta


def _cache_images(settings: Settings, snapshot_path: str, hostname: str | None, token: str | None):
    fetcher = ImageFetcher(settings, Path(settings.data_dir) / "cache" / "downloads")
    cache = training_image_cache(Path(settings.data_dir) / "cache" / "train256", settings.train_cache_bytes)
    entries = [json.loads(line) for line in Path(snapshot_path).read_text(encoding="utf-8").splitlines()[1:]]

    def one(row):
        try:
            path = cached_training_image(fetcher, row["image"], cache, hostname, token, settings.train_image_size)
            return {**row, "image": str(path)}, None
        except ImageFetchError as exc:
            return None, f"task {row['task']}: {exc}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, entries))
    rows = [r for r, _ in results if r]
    cache.evict_over_bound(keep=[Path(r["image"]) for r in rows])
    return rows, [f for _, f in results if f]


def _score(meta: dict) -> float | None:
    """Mean held-out macro-F1 over the tasks with held-out labels; None without any."""
    values = [m.get("macro_f1") for m in (meta.get("metrics") or {}).values() if m]
    if not values:
        return None
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return math.nan
    return sum(values) / len(values)


def _one_class(meta: dict) -> bool:
    """Whether the version answered one class for every held-out image, in every task whose
    held-out images have two true classes or more: it learned nothing (a network gone NaN does
    this, as the argmax of NaN is class 0)."""
    judged = [m["confusion"] for m in (meta.get("metrics") or {}).values()
              if m and sum(1 for row in m.get("confusion") or [] if sum(row) > 0) >= 2]
    return bool(judged) and all(sum(1 for column in zip(*c) if sum(column) > 0) == 1 for c in judged)


def _promotion(settings: Settings, parent_meta: dict, meta: dict, folder: Path) -> tuple[bool, str]:
    """The README's promotion rule: never a version that may not serve (see registry.refusal);
    every other one with `always`; else by the held-out metric."""
    why_not = refusal(folder)
    if why_not:
        return False, f"not promotable: {why_not}"
    if settings.promotion == "always":
        return True, "promotion rule: always"
    return _by_metric(settings.promotion_margin, parent_meta, meta)


def _by_metric(margin: float, parent_meta: dict, meta: dict) -> tuple[bool, str]:
    """Not worse than the current version by more than `margin`; but a tie never goes to a
    candidate that scores 0 or answers one class for everything, and no score is no promotion."""
    new, old = _score(meta), _score(parent_meta)
    if new is None or not math.isfinite(new):
        return False, f"no valid held-out macro-F1 ({new}) to judge it by; promote it by hand if wanted"
    if not parent_meta.get("trained"):
        return True, "first trained version"
    if old is None or not math.isfinite(old):
        return True, f"held-out macro-F1 {new:.4f}; the current version has no valid one to compare"
    versus = f"held-out macro-F1 {new:.4f} vs current {old:.4f}"
    if new > old:
        return True, versus
    if new < old - margin:
        return False, f"held-out macro-F1 {new:.4f} is worse than current {old:.4f} by more than {margin}"
    if new <= 0 or _one_class(meta):
        return False, versus + ": a tie, and the new version " + (
            "scores 0" if new <= 0 else "answers one class for every held-out image")
    return True, f"{versus} (margin {margin})"
