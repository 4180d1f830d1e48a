"""Predictions kept in Redis, by project, version and task id: what the refresh job and
`/predict` computed, so that `/predict` answers a task it has seen without the model. Each
project version's hash expires AESEMO_PREDICTION_TTL after its last write, so a version that
stopped serving leaves nothing behind for long.
"""
from __future__ import annotations

import json

import redis

from backend.core import keys


def stored_predictions(client: redis.Redis, project: str, version: str, task_ids: list) -> dict:
    """task id -> the stored prediction, for the ids that have one."""
    if not task_ids:
        return {}
    values = client.hmget(keys.predictions(project, version), [str(t) for t in task_ids])
    return {task_id: json.loads(value) for task_id, value in zip(task_ids, values) if value is not None}


def store_predictions(client: redis.Redis, project: str, version: str, by_task: dict, ttl_s: int) -> None:
    if not by_task:
        return
    key = keys.predictions(project, version)
    pipe = client.pipeline()
    pipe.hset(key, mapping={str(t): json.dumps(p, sort_keys=True) for t, p in by_task.items()})
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
