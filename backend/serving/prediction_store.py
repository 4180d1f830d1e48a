"""Predictions kept in Redis, by project, version and task id: what the refresh job and
`/predict` computed, so that `/predict` answers a task it has seen without the model. An entry
holds the image it was computed from and answers only a task that still shows that image (a
task whose data changed, or a test reusing ids, gets a fresh prediction). Each
project version's hash expires AESEMO_PREDICTION_TTL after its last write, so a version that
stopped serving leaves nothing behind for long.
"""
from __future__ import annotations

import json

import redis

from backend.core import keys


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


def refreshed_task_ids(client: redis.Redis, project: str, version: str) -> set[str]:
    return {t.decode() if isinstance(t, bytes) else t for t in client.smembers(keys.refreshed(project, version))}


def mark_refreshed(client: redis.Redis, project: str, version: str, task_ids: list, ttl_s: int) -> None:
    if not task_ids:
        return
    key = keys.refreshed(project, version)
    pipe = client.pipeline()
    pipe.sadd(key, *[str(t) for t in task_ids])
    pipe.expire(key, ttl_s)
    pipe.execute()
