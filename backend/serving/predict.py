"""`/predict`: every task of a body through the model in batched passes.

Tasks are taken in chunks (AESEMO_PREDICT_CHUNK) so memory stays bounded whatever the body's
size: a chunk's images are fetched in parallel, predicted in one pass, and only the small
result dicts are kept. A task whose image cannot be fetched or decoded gets an empty list
(no prediction), so Label Studio stores nothing for it and asks again on its next pass; the
reason is in the reply's `errors`, in the log and in the image-failure metric.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from collections.abc import Callable

from PIL import Image

from model.classes import TASKS
from model.predictor import Predictor

from backend.core.errors import Conflict
from backend.fetch.fetcher import ImageFetchError
from backend.labelstudio.label_config import ProjectLabels, prediction_result
from model.uncertainty import certainty

log = logging.getLogger(__name__)

Fetch = Callable[[str], Image.Image]

# Image downloads at once for one request. Each request has its own, so one caller's hanging
# image servers cannot hold another's fetches up; a process runs at most --threads requests at
# once, so at most --threads x FETCH_THREADS downloads.
FETCH_THREADS = 8
BUDGET_KIND = "budget"


@dataclass
class TaskFailure:
    index: int
    task: object
    kind: str
    message: str

    def to_dict(self) -> dict:
        return {"index": self.index, "task": self.task, "kind": self.kind, "error": self.message}


def class_order(labels: ProjectLabels, predictor: Predictor, version: str) -> dict[str, list[int]]:
    """For each task, the model's output index of every class in the label config's order.
    A choice the model has no output for is the client's mismatch: answer 409, not 500."""
    order = {}
    wanted = {"aesthetic": labels.aesthetic_classes, "emotion": labels.emotion_classes}
    for task in TASKS:
        known = {name: i for i, name in enumerate(predictor.classes[task])}
        unknown = [name for name in wanted[task] if name not in known]
        if unknown:
            raise Conflict(f"model version {version} has no {task} class for the label config's choices "
                           f"{unknown} (it knows {list(predictor.classes[task])}); train a version on "
                           f"this config")
        order[task] = [known[name] for name in wanted[task]]
    return order


def predict_tasks(tasks: list, labels: ProjectLabels, predictor: Predictor, version: str, fetch: Fetch,
                  chunk_size: int, deadline: float,
                  uncertainty: str = "least_confidence") -> tuple[list, list[TaskFailure]]:
    """`results[i]` answers `tasks[i]`: a prediction dict, or [] when that task failed or the
    request's budget (`deadline`, in time.monotonic()) was spent before it was done. Its `score`
    is the task's certainty under the measure `uncertainty` (AESEMO_UNCERTAINTY)."""
    order = class_order(labels, predictor, version)
    results: list = []
    failures: list[TaskFailure] = []
    # A pool of this request's own: another request's hanging images never hold its fetches up.
    pool = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="image-fetch")
    try:
        for start in range(0, len(tasks), chunk_size):
            chunk = list(enumerate(tasks[start:start + chunk_size], start))
            probabilities, chunk_failures = _predict_chunk(chunk, labels, predictor, fetch, pool, deadline)
            failures += chunk_failures
            results += [_result(labels, order, version, probabilities[i], uncertainty) if i in probabilities else []
                        for i, _ in chunk]
    finally:
        # fetches still running end by their own AESEMO_IMAGE_TIMEOUT (and fill the image cache
        # for Label Studio's next try); those not started yet never start
        pool.shutdown(wait=False, cancel_futures=True)
    return results, failures


def _result(labels: ProjectLabels, order: dict[str, list[int]], version: str, p: dict, uncertainty: str) -> dict:
    aesthetic = [p["aesthetic"][j] for j in order["aesthetic"]]
    emotion = [p["emotion"][j] for j in order["emotion"]]
    return prediction_result(labels, aesthetic, emotion, version, certainty(uncertainty, [aesthetic, emotion]))


def _predict_chunk(chunk: list, labels: ProjectLabels, predictor: Predictor, fetch: Fetch,
                   pool: ThreadPoolExecutor, deadline: float) -> tuple[dict[int, dict], list[TaskFailure]]:
    """The model's probabilities by task index, and the chunk's failures. Images still loading at
    the deadline are given up; what did arrive is predicted (the one forward pass that may end
    past the deadline); a chunk that starts after the deadline fetches and predicts nothing."""
    if time.monotonic() < deadline:
        loaded = _load_chunk(chunk, labels, fetch, pool, deadline)
    else:
        loaded = [(i, _over_budget(i, task)) for i, task in chunk]
    good = [(i, image) for i, image in loaded if not isinstance(image, TaskFailure)]
    failures = [f for _, f in loaded if isinstance(f, TaskFailure)]
    probabilities = predictor.predict_images([image for _, image in good], batch_size=len(chunk)) if good else []
    return {i: p for (i, _), p in zip(good, probabilities)}, failures


def _load_chunk(chunk: list, labels: ProjectLabels, fetch: Fetch, pool: ThreadPoolExecutor,
                deadline: float) -> list:
    """(index, image or TaskFailure) for each task of the chunk, waiting no longer than `deadline`."""
    futures = [pool.submit(_load, i, task, labels, fetch) for i, task in chunk]
    wait(futures, timeout=max(0.0, deadline - time.monotonic()))
    return [future.result() if future.done() else (i, _over_budget(i, task))
            for future, (i, task) in zip(futures, chunk)]


def _over_budget(index: int, task) -> TaskFailure:
    task_id = task.get("id") if isinstance(task, dict) else None
    return TaskFailure(index, task_id, BUDGET_KIND,
                       f"task {task_id if task_id is not None else index}: not predicted within the "
                       f"request's time budget (AESEMO_PREDICT_BUDGET)")


def _load(index: int, task, labels: ProjectLabels, fetch: Fetch):
    task_id = task.get("id") if isinstance(task, dict) else None
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        return index, TaskFailure(index, task_id, "bad_task", f"task {index} has no \"data\" object")
    url = data.get(labels.image_key)
    if not isinstance(url, str) or not url:
        return index, TaskFailure(index, task_id, "missing_image_field",
                                  f"task {task_id if task_id is not None else index} has no "
                                  f"data.{labels.image_key} (the label config's image field)")
    try:
        return index, fetch(url)
    except ImageFetchError as exc:
        return index, TaskFailure(index, task_id, exc.kind, f"task {task_id}: {exc}")
