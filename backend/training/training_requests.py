"""Requests for training, and the auto-training trigger.

Issue 5's job queue consumes `aesemo:training_requests`; until then a request is a recorded
entry. The trigger counts consensus labels that became `agreed` since the last snapshot and
asks once each time the count reaches the threshold (INCR is atomic, so concurrent webhook
threads cannot both fire).
"""
from __future__ import annotations

import json
import time

import redis

REQUESTS_LIST = "aesemo:training_requests"


def new_labels_key(project: str) -> str:
    return f"aesemo:p:{project}:new_labels"


def request_training(client: redis.Redis, project: str, reason: str, params: dict | None = None) -> dict:
    entry = {"project": project, "reason": reason, "params": params or {}, "requested_at": time.time()}
    client.rpush(REQUESTS_LIST, json.dumps(entry))
    return entry


def count_new_labels(client: redis.Redis, project: str, new_labels: int, threshold: int) -> bool:
    """Adds newly agreed labels; True (and a training request) when this crossed a multiple
    of `threshold`. A threshold of 0 switches auto-training off."""
    if new_labels <= 0:
        return False
    total = client.incrby(new_labels_key(project), new_labels)
    if threshold <= 0 or (total - new_labels) // threshold == total // threshold:
        return False
    request_training(client, project, "auto", {"new_labels": total})
    return True


def reset_new_labels(client: redis.Redis, project: str) -> None:
    client.delete(new_labels_key(project))
