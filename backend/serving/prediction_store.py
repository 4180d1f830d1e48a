"""Predictions kept in Redis, by project, version and task id: what the refresh job and
`/predict` computed, so that `/predict` answers a task it has seen without the model. An entry
holds the image it was computed from and answers only a task that still shows that image (a
task whose data changed, or a test reusing ids, gets a fresh prediction). Each
project version's hash expires AESEMO_PREDICTION_TTL after its last write, so a version that
stopped serving leaves nothing behind for long.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from collections.abc import Callable

import redis

from backend.core import keys
from backend.labelstudio.label_config import ProjectLabels

log = logging.getLogger(__name__)

# tasks -> (results[i] answering tasks[i], [] for a task with none; failures indexed into tasks)
Predict = Callable[[list], tuple[list, list]]


def stored_predictions(client: redis.Redis, project: str, version: str, images: dict) -> dict:
    """task id -> the stored prediction, for the ids (of `images`: task id -> image URL) that
    have one computed from that image."""
    if not images:
        return {}
    ids = list(images)
    values = client.hmget(keys.predictions(project, version), [str(t) for t in ids])
    entries = {task_id: json.loads(value) for task_id, value in zip(ids, values) if value is not None}
    return {task_id: entry["prediction"] for task_id, entry in entries.items() if entry.get("image") == images[task_id]}


def store_predictions(client: redis.Redis, project: str, version: str, entries: dict, ttl_s: int) -> None:
    """`entries`: task id -> (image URL, prediction)."""
    if not entries:
        return
    key = keys.predictions(project, version)
    pipe = client.pipeline()
    pipe.hset(key, mapping={str(t): json.dumps({"image": image, "prediction": p}, sort_keys=True)
                            for t, (image, p) in entries.items()})
    pipe.expire(key, ttl_s)
    pipe.execute()


def task_id(task) -> int | None:
    """A task's Label Studio id, the store's key; None for a task without one (never stored)."""
    value = task.get("id") if isinstance(task, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class VersionPredictions:
    """One project version's stored predictions. With `redis_optional` a Redis error reads as
    nothing stored and a failed write is only logged: /predict goes on from the model without
    Redis. Without it the error is raised: the refresh job fails, and its rerun goes on where it
    stopped."""
    client: redis.Redis
    project: str
    version: str
    ttl_s: int
    redis_optional: bool = False

    def read(self, images: dict) -> dict:
        try:
            return stored_predictions(self.client, self.project, self.version, images)
        except redis.RedisError:
            if not self.redis_optional:
                raise
            return {}

    def write(self, entries: dict) -> None:
        try:
            store_predictions(self.client, self.project, self.version, entries, self.ttl_s)
        except redis.RedisError as exc:
            if not self.redis_optional:
                raise
            log.debug("predictions of project %s not stored: %s", self.project, exc)


def stored_then_predicted(store: VersionPredictions | None, tasks: list, labels: ProjectLabels,
                          predict: Predict) -> tuple[list, list]:
    """`results[i]` answers `tasks[i]`: the stored prediction while the task shows the image it
    was computed from, else `predict`'s, which is then stored. `predict` is called once, with the
    tasks the store did not answer (even none: it may check the label config). The failures are
    `predict`'s, their `index` into `tasks`. `store` None: nothing is read or kept."""
    ids = [task_id(t) for t in tasks]
    images = {i: labels.image_url(t) for i, t in zip(ids, tasks) if i is not None}
    stored = store.read(images) if store is not None else {}
    missing = [n for n, i in enumerate(ids) if i is None or i not in stored]
    computed, failures = predict([tasks[n] for n in missing])
    for failure in failures:
        failure.index = missing[failure.index]
    results = [stored.get(i, []) for i in ids]
    for n, result in zip(missing, computed):
        results[n] = result
    if store is not None:
        store.write({ids[n]: (images[ids[n]], r) for n, r in zip(missing, computed) if r and ids[n] is not None})
    return results, failures
