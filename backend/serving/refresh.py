"""The prediction-refresh job, run by an RQ worker on the `predict` queue: the project's tasks
that still need labels get the current version's predictions in Label Studio, batch by batch
(list, predict, delete the old ones unless AESEMO_REFRESH_KEEP_OLD, import in bulk), and, where the
label config shows it, the suggestion's text in their data (backend/serving/suggestion_text.py).
Labelled tasks keep theirs. What a task holds is what Label Studio lists, not what a job remembers
writing: a task whose predictions are not the current version's alone is written, so a rerun after
a crash or a cancel goes on where it stopped, and a version promoted again (or rolled back to)
replaces whatever was written since. A promotion during the run stops it ("superseded"), and the
job queued by that promotion refreshes with the new version.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from rq import get_current_job

from backend.core import keys
from backend.core.errors import Conflict
from backend.core.redis_connection import redis_url
from backend.core.settings import Settings
from backend.fetch.fetcher import ImageFetcher
from backend.labelstudio import task_api
from backend.labelstudio.follow import VersionFollower
from backend.labelstudio.label_config import ProjectLabels, parse_label_config
from backend.labelstudio.projects import ProjectContext, ProjectStore
from backend.serving.models import ModelCache, ServedModel
from backend.serving.predict import predict_tasks
from backend.serving.prediction_store import VersionPredictions, stored_then_predicted
from backend.serving.registry import current_version_name, fetch_current
from backend.serving.suggestion_text import data_with_text, shown_once_written, suggestion_text, text_is_current
from backend.serving.suggestions import TASK_TYPES, shown_result, withheld_reason, withheld_types
from backend.jobs.connection import delete_if_equal
from backend.jobs.context import job_settings
from backend.jobs.progress import Progress
from backend.labelstudio.client import project_studio, sdk_client
from backend.votes.control import is_control_task
from backend.votes.shown import remember_shown_many
from backend.votes.store import VoteStore

log = logging.getLogger(__name__)

LABEL_STUDIO_TIMEOUT_S = 120
# the backend record exists already (the job is not inside a /setup): try at once, then once more
FOLLOW_DELAYS_S = (0.0, 5.0)
FETCH_DEADLINE_S = 86400    # no request budget here: each image has its own AESEMO_IMAGE_TIMEOUT


@dataclass
class _Refresh:
    settings: Settings
    project: str
    client: redis.Redis
    context: ProjectContext
    labels: ProjectLabels
    served: ServedModel
    pointer: str | None      # the project's version pointer when the job started (None: a base version)
    progress: Progress
    withheld: dict[str, str]  # {task type: why} the served version does not suggest


def refresh_project(project: str) -> dict:
    settings = job_settings()
    job = get_current_job()
    client = redis.Redis.from_url(redis_url(settings), decode_responses=True)
    if job is not None:
        delete_if_equal(client, keys.refresh_pending(project), job.id)
    wanted = job.meta.get("task_ids") if job is not None else None
    run = _open(settings, project, client, Progress(job, job.connection if job else client, None))
    why_not = withheld_reason(settings, run.served.version, run.served.trained)
    if why_not:
        run.progress.state("finished", skipped=why_not)
        return {"version": run.served.version, "skipped": why_not}
    return _refresh(run, wanted)


def _open(settings: Settings, project: str, client: redis.Redis, progress: Progress) -> _Refresh:
    context = ProjectStore(client).get(project)
    if not context.label_config:
        raise Conflict(f"project {project} has no label config (connect the backend to it first)")
    labels = parse_label_config(context.label_config, settings.aesthetic_control, settings.emotion_control)
    pointer = current_version_name(client, project)
    served = ModelCache(settings.max_image_pixels).load(fetch_current(client, settings, project, labels.classes()))
    return _Refresh(settings, project, client, context, labels, served, pointer, progress,
                    withheld_types(settings, served.predictor.meta))


def _refresh(run: _Refresh, wanted: list | None) -> dict:
    studio = project_studio(run.settings, run.context)
    if studio is None or not studio.token:  # a backend used without Label Studio's API: nothing to do
        why = ("no Label Studio address or token to write predictions with (LABEL_STUDIO_URL and "
               "LABEL_STUDIO_API_KEY, or /setup's)")
        run.progress.state("finished", skipped=why)
        return {"version": run.served.version, "skipped": why}
    api = sdk_client(run.settings, studio, LABEL_STUDIO_TIMEOUT_S)
    run.progress.state("listing", version=run.served.version)
    # the job's thread has no later /setup to wait for: Label Studio's sort must count what it writes
    VersionFollower(run.settings, run.client, delays_s=FOLLOW_DELAYS_S).sync_now(run.context, run.served.version)
    listed = task_api.list_tasks(api, run.project)
    # the whole list, labelled or not: the consensus counts its unlabelled tasks as no_votes at once
    VoteStore(run.client).note_task_list(run.project, listed, run.labels.image_key)
    todo = _tasks_to_refresh(run, listed, wanted)
    counts = {"version": run.served.version, "tasks": len(todo), "written": 0, "failed": 0}
    run.progress.state("refreshing", **counts)
    fetcher = ImageFetcher(run.settings, Path(run.settings.data_dir) / "cache" / "downloads")
    for start in range(0, len(todo), run.settings.refresh_batch):
        if current_version_name(run.client, run.project) != run.pointer:
            run.progress.state("superseded", **counts)
            return {**counts, "superseded": True}
        written, failed = _refresh_batch(run, api, fetcher, todo[start:start + run.settings.refresh_batch])
        counts["written"] += written
        counts["failed"] += failed
        run.progress.state("refreshing", **counts)
    run.progress.state("finished", **counts)
    return counts


def _tasks_to_refresh(run: _Refresh, tasks: list[dict], wanted: list | None) -> list[dict]:
    """Unlabelled tasks (of `wanted` when given) that Label Studio does not list with this
    version's prediction (and, unless old ones are kept, with this version's alone), or whose data
    lacks the suggestion text the config shows (a config that gained it since) or shows one where
    none belongs."""
    wanted_ids = None if wanted is None else set(wanted)
    return [t for t in tasks if not t["is_labeled"]
            and (_needs_writing(run, t["prediction_versions"]) or _text_out_of_date(run, t))
            and (wanted_ids is None or str(t["id"]) in wanted_ids)]


def _needs_writing(run: _Refresh, versions: set[str]) -> bool:
    if run.served.version not in versions:
        return True
    return not run.settings.refresh_keep_old and versions != {run.served.version}


def _text_out_of_date(run: _Refresh, task: dict) -> bool:
    key, data = run.labels.suggestion_key, task.get("data")
    if key is None or not isinstance(data, dict):
        return False
    names_a_class = (not is_control_task(task["id"], run.settings.control_fraction)
                     and len(run.withheld) < len(TASK_TYPES))
    return (key in data) != names_a_class


def _refresh_batch(run: _Refresh, api, fetcher: ImageFetcher, batch: list[dict]) -> tuple[int, int]:
    """(written, failed): one batch predicted (stored ones reused) and written into Label Studio."""
    version, ttl = run.served.version, run.settings.prediction_ttl_s
    store = VersionPredictions(run.client, run.project, version, ttl)
    results, _ = stored_then_predicted(store, batch, run.labels, lambda tasks: _predict(run, fetcher, tasks))
    ready = {task["id"]: shown_result(result, task["id"], run.labels, run.withheld, run.settings.control_fraction)
             for task, result in zip(batch, results) if result}
    ids = list(ready)
    if ids:
        if not run.settings.refresh_keep_old:
            task_api.delete_predictions(api, run.project, ids)
        task_api.import_predictions(api, run.project, [{"task": i, **ready[i]} for i in ids])
        _write_texts(run, api, [task for task in batch if task["id"] in ready], ready)
        remember_shown_many(run.client, run.project, {i: shown_once_written(run.labels, ready[i]) for i in ids})
    return len(ids), len(batch) - len(ids)


def _write_texts(run: _Refresh, api, tasks: list[dict], predictions: dict) -> None:
    """Each task's data shows its prediction's suggestion text (none where it names no class),
    where the config shows one; a task already showing it is not written again."""
    if run.labels.suggestion_key is None:
        return
    for task in tasks:
        prediction = predictions[task["id"]]
        text = suggestion_text(run.labels, prediction)
        if not text_is_current(run.labels, task, text):
            _write_text(run, api, task["id"], text)


def _write_text(run: _Refresh, api, task: int, text: str | None) -> None:
    """The task's data as Label Studio holds it now, with `text`: Label Studio replaces the data
    whole, and the listing may be hours old on a large project, so an edit made since is kept."""
    data = task_api.task_data(api, task)
    if data is not None and not text_is_current(run.labels, {"data": data}, text):
        task_api.replace_task_data(api, task, data_with_text(run.labels, data, text))


def _predict(run: _Refresh, fetcher: ImageFetcher, tasks: list[dict]) -> tuple[list, list]:
    if not tasks:
        return [], []

    def fetch(url):
        return fetcher.fetch(url, hostname=run.context.hostname, access_token=run.context.access_token)

    results, failures = predict_tasks(tasks, run.labels, run.served.predictor, run.served.version, fetch,
                                      run.settings.predict_chunk_size, time.monotonic() + FETCH_DEADLINE_S,
                                      run.settings.uncertainty)
    for failure in failures[:5]:
        log.warning("refresh of project %s: no prediction for %s", run.project, failure.message)
    return results, failures
