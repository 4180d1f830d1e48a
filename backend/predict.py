"""`/predict`: every task of a body through the model in batched passes.

Tasks are taken in chunks (AESEMO_PREDICT_CHUNK) so memory stays bounded whatever the body's
size: a chunk's images are fetched in parallel, predicted in one pass, and only the small
result dicts are kept. A task whose image cannot be fetched or decoded gets an empty list
(no prediction), so Label Studio stores nothing for it and asks again on its next pass; the
reason is in the reply's `errors`, in the log and in the image-failure metric.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from model.classes import TASKS
from model.predictor import Predictor

from .errors import RequestError
from .images import ImageFetchError
from .label_config import ProjectLabels, prediction_result

log = logging.getLogger(__name__)

Fetch = Callable[[str], Image.Image]


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
            raise RequestError(f"model version {version} has no {task} class for the label config's choices "
                               f"{unknown} (it knows {list(predictor.classes[task])}); train a version on "
                               f"this config", status=409)
        order[task] = [known[name] for name in wanted[task]]
    return order


def predict_tasks(tasks: list, labels: ProjectLabels, predictor: Predictor, version: str, fetch: Fetch,
                  pool: ThreadPoolExecutor, chunk_size: int) -> tuple[list, list[TaskFailure]]:
    """`results[i]` answers `tasks[i]`: a prediction dict, or [] when that task failed."""
    order = class_order(labels, predictor, version)
    results: list = []
    failures: list[TaskFailure] = []
    for start in range(0, len(tasks), chunk_size):
        chunk = tasks[start:start + chunk_size]
        loaded = list(pool.map(lambda item: _load(item[0], item[1], labels, fetch), enumerate(chunk, start)))
        good = [(i, image) for i, image in loaded if not isinstance(image, TaskFailure)]
        failures += [f for _, f in loaded if isinstance(f, TaskFailure)]
        probabilities = predictor.predict_images([image for _, image in good], batch_size=chunk_size) if good else []
        by_index = {i: p for (i, _), p in zip(good, probabilities)}
        for i in range(start, start + len(chunk)):
            if i not in by_index:
                results.append([])
                continue
            p = by_index[i]
            results.append(prediction_result(labels, [p["aesthetic"][j] for j in order["aesthetic"]],
                                             [p["emotion"][j] for j in order["emotion"]], version))
    return results, failures


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
