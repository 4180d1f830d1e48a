"""The training job, run by an RQ worker: one function, `train_project`, whose flow reads top
to bottom in `_train` as named steps (resync, snapshot, images, manifest, parent, training,
publish, promotion with the runtime, the upload to the object store when there is one,
retention). Each is a named stage of the job's progress (backend/jobs/progress.py), with its own
count and ETA where it has one and the time it took; a cancel request stops the job at its next
progress report.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import redis
from rq import get_current_job
from rq.job import Job, JobStatus

from model.crossval import CrossValidation
from model.errors import VersionError
from model.heldout import HELDOUT_SPLIT, held_out, mark_held_out
from model.network import NetConfig
from model.pipeline import train_version
from model.train import TrainConfig
from model.version import is_trained, read_meta, training_seconds

from backend.core import keys
from backend.core.errors import DomainError, InvalidInput
from backend.core.redis_connection import redis_url
from backend.jobs.connection import delete_if_equal, raw_connection, text_value
from backend.jobs.context import job_settings
from backend.jobs.progress import STAGE_FIELDS, Progress
from backend.jobs.records import fetch_job, reap_abandoned
from backend.core.settings import Settings
from backend.fetch.fetcher import ImageFetchError, ImageFetcher
from backend.labelstudio.label_config import ProjectLabels, parse_label_config
from backend.labelstudio.projects import ProjectContext, ProjectStore
from backend.serving.registry import (base_for, fetch_current, next_version_number, project_versions_dir,
                                      set_current_version)
from backend.serving.retention import apply_retention
from backend.serving.version_store import version_store
from backend.serving.refresh_queue import try_submit_refresh
from backend.training.image_cache import cached_training_image, training_image_cache
from backend.training.queue import training_queue
from backend.training.promotion import heldout_tasks, like_for_like, promotion
from backend.training.report import write_report
from backend.votes.project_consensus import ProjectConsensus
from backend.labelstudio.client import project_studio
from backend.votes.resync import resync

log = logging.getLogger(__name__)


def train_project(project: str) -> dict:
    """Resync, snapshot, fetch images into the cache, fine-tune, evaluate, write a version and
    apply the promotion rule. Runs inside an RQ worker."""
    settings = job_settings()
    job = get_current_job()
    connection = job.connection if job else raw_connection(settings)
    params = dict(job.meta.get("params", {})) if job else {}
    # One training per project at a time, even with several workers. The lock holds the job's
    # id and lasts as long as a job may run; a holder whose worker died (RQ marks its job failed
    # once its heartbeats stop) is noticed while waiting and its lock released.
    lock = connection.lock(keys.training_lock(project), timeout=settings.job_timeout_s + 60)
    _acquire_training_lock(settings, connection, lock, project, job.id if job else f"local-{os.getpid()}")
    try:
        if job:
            if text_value(connection, keys.pending_job(project)) == job.id:
                connection.delete(keys.pending_job(project))
            connection.set(keys.running_job(project), job.id)
        progress = Progress(job, connection, lock)
        try:
            return _train(settings, project, params, progress, job.id if job else "local")
        except Exception as exc:  # the version is promoted either way; serving retries the export
            if job:
                _record_failure(job, progress, exc)
            raise
    finally:
        if job and text_value(connection, keys.running_job(project)) == job.id:
            connection.delete(keys.running_job(project))
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass


def _record_failure(job: Job, progress: Progress, exc: Exception) -> None:
    """The error, and the stage it ended: its time counts among the stages'."""
    failed_in = progress.current["name"] if progress.current else None
    progress.end_stage()
    kept = {k: v for k, v in job.meta.get("progress", {}).items() if k not in STAGE_FIELDS}
    job.meta["error"] = f"{type(exc).__name__}: {exc}"
    job.meta["progress"] = {**kept, "state": "failed", "failed_in": failed_in, "stages": progress.stages}
    job.save_meta()


def _acquire_training_lock(settings: Settings, connection: redis.Redis, lock, project: str, token: str) -> None:
    deadline = time.monotonic() + settings.job_timeout_s
    while not lock.acquire(blocking=False, token=token):
        holder = text_value(connection, keys.training_lock(project))
        if holder and holder.startswith("train-"):
            reap_abandoned(training_queue(settings, connection))
            held = fetch_job(connection, holder)
            if (held is None or held.get_status(refresh=True) != JobStatus.STARTED) and \
                    delete_if_equal(connection, keys.training_lock(project), holder):
                log.warning("released project %s's training lock: its holder %s is no longer running", project, holder)
                continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"project {project} is still training elsewhere ({holder})")
        time.sleep(1.0)


@dataclass
class _Run:
    """What every step of one training run reads."""
    settings: Settings
    project: str
    params: dict
    progress: Progress
    job_id: str
    client: redis.Redis
    context: ProjectContext
    labels: ProjectLabels
    consensus: ProjectConsensus

    @property
    def classes(self) -> dict:
        return {"aesthetic": list(self.labels.aesthetic_classes), "emotion": list(self.labels.emotion_classes)}


@dataclass
class _Images:
    rows: list[dict]     # the snapshot's rows, each image a path in the training-image cache
    failed: list[str]    # one message per image that could not be fetched
    seconds: float


def _train(settings: Settings, project: str, params: dict, progress: Progress, job_id: str) -> dict:
    run = _open_run(settings, project, params, progress, job_id)
    resynced = resync_step(run)
    snapshot = snapshot_step(run)
    images = images_step(run, snapshot)
    progress.stage("parent", "writing the manifest and loading the version to start from")
    manifest = manifest_step(run, images)
    parent, parent_meta = parent_step(run)
    staging, folder = naming_step(run)
    with removed_on_failure(staging):
        meta = training_step(run, manifest, staging, parent, snapshot, images)
        progress.stage("report", "writing the version, its report and confusion matrices")
        publish_step(staging, folder, meta)
    promoted, why = promotion_step(run, parent, parent_meta, meta, folder, manifest)
    removed = retention_step(run)
    progress.finish("finished", version=folder.name, promoted=promoted)
    return {**_result(folder.name, promoted, why, parent.name, meta, snapshot, images, resynced),
            "removed": removed, "stages": progress.stages}


def _open_run(settings: Settings, project: str, params: dict, progress: Progress, job_id: str) -> _Run:
    client = redis.Redis.from_url(redis_url(settings), decode_responses=True)
    context = ProjectStore(client).get(project)
    if not context.label_config:
        raise InvalidInput(f"project {project} has no label config (connect the backend to it first)")
    labels = parse_label_config(context.label_config, settings.aesthetic_control, settings.emotion_control)
    return _Run(settings, project, params, progress, job_id, client, context, labels,
                ProjectConsensus(client, settings))


def resync_step(run: _Run) -> dict | None:
    """Votes made while the backend was unreachable, fetched from Label Studio, when configured."""
    studio = project_studio(run.settings, run.context)
    if not (run.settings.resync_before_snapshot and studio and studio.token):
        return None
    run.progress.stage("resync", "fetching votes made while the backend was unreachable from Label Studio")
    try:
        return resync(run.consensus, run.project, run.labels, run.settings, studio)
    except DomainError as exc:  # keep training on the votes we have
        log.warning("resync before training failed: %s", exc)
        return {"error": str(exc)}


def snapshot_step(run: _Run) -> dict:
    run.progress.stage("snapshot", "writing the snapshot of the consensus labels")
    snapshot = run.consensus.snapshot(run.project, run.labels)
    if snapshot["rows"] < run.settings.min_training_labels:
        raise InvalidInput(f"project {run.project} has {snapshot['rows']} consensus-labelled images; training "
                           f"needs at least {run.settings.min_training_labels} (AESEMO_MIN_TRAINING_LABELS)")
    return snapshot


def images_step(run: _Run, snapshot: dict) -> _Images:
    """Every snapshot image in the training-image cache; fails when too many could not be fetched."""
    settings = run.settings
    run.progress.stage("images", f"fetching {snapshot['rows']} images into the training-image cache")
    started = time.monotonic()
    # the fetcher picks each image's token itself (backend/fetch/tokens.py): what goes in
    # is /setup's pair as stored, never the operator's key
    rows, failed = _cache_images(settings, snapshot["path"], run.context.hostname, run.context.access_token,
                                 lambda done, total: run.progress.counted(done, total, "images"))
    images = _Images(rows, failed, time.monotonic() - started)
    total = len(rows) + len(failed)
    if total == 0 or len(failed) / total > settings.max_failed_image_fraction:
        raise InvalidInput(f"{len(failed)} of {total} images could not be fetched (over the allowed "
                           f"{settings.max_failed_image_fraction:.0%}); first: {failed[0] if failed else '-'}")
    return images


def manifest_step(run: _Run, images: _Images) -> Path:
    """The training set as the model reads it: the classes, then one row per cached image, the
    project's held-out tasks marked (model/heldout.py: the same tasks in every job)."""
    job_dir = Path(run.settings.data_dir) / "projects" / run.project / "jobs" / run.job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    manifest = job_dir / "manifest.jsonl"
    rows = mark_held_out(images.rows, run.project, run.settings.heldout_fraction)
    lines = [json.dumps(r) for r in [{"classes": run.classes}] + rows]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def parent_step(run: _Run):
    backbone = run.params.get("backbone", run.settings.backbone)
    return _parent(replace(run.settings, backbone=backbone), run.client, run.project, run.classes)


def naming_step(run: _Run) -> tuple[Path, Path]:
    """The new version's staging folder and its final folder (numbered after the existing ones)."""
    versions = project_versions_dir(run.settings, run.project)
    versions.mkdir(parents=True, exist_ok=True)
    name = f"v{next_version_number(run.settings, run.project):04d}-{time.strftime('%Y%m%d%H%M%S')}"
    staging = versions / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    return staging, versions / name


@contextmanager
def removed_on_failure(staging: Path):
    """The staging folder removed when its block fails (a full disk, a diverged loss, a cancel):
    a half-written version holds up to a model's size of disk, and nothing else removes it."""
    try:
        yield
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _train_config(settings: Settings, params: dict, finetune: str = "full") -> TrainConfig:
    """The request's parameters over the settings' defaults."""
    return TrainConfig(finetune=finetune, full_finetune_labels=settings.full_finetune_labels,
                       epochs=params.get("epochs", settings.train_epochs),
                       batch_size=params.get("batch_size", settings.train_batch_size),
                       lr=params.get("lr", settings.train_lr), device=settings.train_device,
                       precision=settings.train_precision,
                       patience=settings.train_patience, heldout_split=HELDOUT_SPLIT,
                       train_size=settings.train_image_size, crop_size=settings.train_crop_size)


def training_step(run: _Run, manifest: Path, staging: Path, parent, snapshot: dict, images: _Images) -> dict:
    """Fine-tune the parent on the manifest and write the version into `staging`."""
    config = _train_config(run.settings, run.params, finetune_mode(read_meta(parent.folder), run.settings.finetune))
    held = sum(held_out(run.project, row["task"], run.settings.heldout_fraction) for row in images.rows)
    run.progress.stage("training", f"training {run.params.get('backbone', run.settings.backbone)} from {parent.name} "
                                   f"on {len(images.rows) - held} images, scored on {held} held-out ones after "
                                   f"each of up to {config.epochs} epochs", epochs=config.epochs)
    return train_version(manifest, staging, NetConfig(), config, init_from=parent.folder, progress=run.progress,
                         extra_meta={"parent_version": parent.name, "snapshot_id": snapshot["id"],
                                     "snapshot_sha256": snapshot["sha256"], "job_id": run.job_id,
                                     "images": {"used": len(images.rows), "failed": len(images.failed)}},
                         crossval=CrossValidation(min_heldout=run.settings.min_heldout))


def finetune_mode(parent_meta: dict, configured: str) -> str:
    """The configured mode (AESEMO_FINETUNE) from pretrained or trained weights; "full" from
    random filters, which a frozen backbone would keep random."""
    origin = parent_meta.get("origin", parent_meta.get("init"))
    return "full" if origin == "random" else configured


def publish_step(staging: Path, folder: Path, meta: dict) -> None:
    write_report(staging, meta)
    os.replace(staging, folder)  # a version folder appears whole or not at all


def promotion_step(run: _Run, parent, parent_meta: dict, meta: dict, folder: Path,
                   manifest: Path) -> tuple[bool, str]:
    """The candidate and the current version scored on the same held-out tasks, then the rule."""
    run.progress.stage("promotion", "comparing the new version with the current one on the held-out tasks")
    evidence = None
    if run.settings.promotion == "metric" and is_trained(parent_meta):
        evidence = like_for_like(folder, parent.folder, heldout_tasks(manifest, run.classes))
    promoted, why = promotion(run.settings, parent_meta, meta, folder, evidence)
    if promoted:
        runtime_step(run, folder, manifest)
    store_step(run, folder)
    if promoted:
        set_current_version(run.client, run.project, folder.name)
        try_submit_refresh(run.settings, run.project, f"promotion of {folder.name}")
    return promoted, why


def store_step(run: _Run, folder: Path) -> None:
    """Every file of the version (its runtime too) into the object store, when there is one,
    before any pointer names it: a replica on another host then finds the whole version."""
    store = version_store(run.settings)
    if store.shared:
        run.progress.stage("upload", f"uploading version {folder.name} to the object store")
        store.publish(run.project, folder.name, folder)


def retention_step(run: _Run) -> list[str]:
    """The project's older versions deleted past AESEMO_KEEP_VERSIONS (backend/serving/retention.py)."""
    if run.settings.keep_versions:
        run.progress.stage("retention", f"deleting versions beyond the newest {run.settings.keep_versions}")
    return apply_retention(run.settings, run.client, run.project)["removed"]


def runtime_step(run: _Run, folder: Path, manifest: Path) -> None:
    """The promoted version's CPU runtime (model/runtime.py), made here before it serves so that
    no serving process spends its CPU on the export: int8 calibrated on the version's training
    images, agreement checked on its held-out ones. A failure leaves serving to export it later."""
    from model import runtime
    if run.settings.inference_path == "pytorch" or not runtime.runtime_available():
        return
    run.progress.stage("runtime", "making the promoted version's OpenVINO runtime for CPU serving")
    try:
        record = runtime.export_from_job_manifest(folder, manifest, run.settings.runtime_min_agreement,
                                                  run.settings.predictor_precision)
        log.info("runtime of %s: %s serves", folder.name, record["serving"])
    except Exception as exc:
        log.warning("runtime export of %s failed (%s: %s)", folder.name, type(exc).__name__, exc)


def _result(name: str, promoted: bool, why: str, parent: str, meta: dict, snapshot: dict, images: _Images,
            resynced: dict | None) -> dict:
    """The job's return value, as `aesemo jobs` and the admin page show it."""
    return {"version": name, "promoted": promoted, "promotion": why, "parent": parent,
            "metrics": {t: None if m is None else {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
                        for t, m in meta["metrics"].items()},
            "snapshot": {k: snapshot[k] for k in ("id", "sha256", "rows", "left_out")},
            "images": {"used": len(images.rows), "failed": len(images.failed), "failures": images.failed[:20],
                       "seconds": round(images.seconds, 3)},
            "training_seconds": round(training_seconds(meta), 3), "device": meta["training"]["device"],
            "stopping": meta["training"].get("stopping"),
            "resync": resynced}


def _parent(settings: Settings, client: redis.Redis, project: str, classes: dict):
    """The version to fine-tune and its metadata: the current one, or a base version when the
    label config changed since (other classes) or the current one's model.json is malformed."""
    parent = fetch_current(client, settings, project, classes)
    try:
        parent_meta = read_meta(parent.folder)
    except VersionError as exc:
        log.warning("project %s: current version %s skipped (%s); training starts from a base version",
                    project, parent.name, exc)
        parent_meta = {}
    if parent_meta.get("classes") != classes:
        parent = base_for(client, settings, classes)
        parent_meta = read_meta(parent.folder)
    return parent, parent_meta


def _cache_images(settings: Settings, snapshot_path: str, hostname: str | None, token: str | None,
                  counted: Callable[[int, int], None]):
    fetcher = ImageFetcher(settings, Path(settings.data_dir) / "cache" / "downloads")
    cache = training_image_cache(Path(settings.data_dir) / "cache" / "train256", settings.train_cache_bytes)
    entries = [json.loads(line) for line in Path(snapshot_path).read_text(encoding="utf-8").splitlines()[1:]]

    def one(row):
        try:
            path = cached_training_image(fetcher, row["image"], cache, hostname, token, settings.train_image_size)
            return {**row, "image": str(path)}, None
        except ImageFetchError as exc:
            return None, f"task {row['task']}: {exc}"

    results = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for result in pool.map(one, entries):
            results.append(result)
            counted(len(results), len(entries))
    rows = [r for r, _ in results if r]
    # after the step, not during it, so that no image of this job goes before training reads it
    cache.evict_over_bound(keep=[Path(r["image"]) for r in rows])
    return rows, [f for _, f in results if f]
