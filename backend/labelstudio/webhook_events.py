"""`/webhook`: check a Label Studio event and record it for the workers; never train inline.

Label Studio waits 1 s for the answer, never retries, and blocks the annotator's save
meanwhile, so this does one Redis write. What is recorded leaves out the project object (it
carries the project token) and keeps what later steps need: ids, annotation results, authors.
"""
from __future__ import annotations

import json
import time

import redis

from backend.core import keys
from backend.core.errors import DomainError, InvalidInput
from backend.core.ids import require_id
from backend.labelstudio.projects import project_id

EVENTS_KEPT = 100_000  # about 100 MB of Redis memory at most

# The audit stream's one rule, shared by record_event and the webhook's one-round-trip script
# (backend/votes/ingest.py): one "event" field, the stream capped (approximately) at EVENTS_KEPT,
# since the votes already hold what counts and Label Studio's export is the full record.
RECORD_EVENT_LUA = f"""
local function record_event(stream, event)
  return redis.call('XADD', stream, 'MAXLEN', '~', {EVENTS_KEPT}, '*', 'event', event)
end
"""

_RECORD = RECORD_EVENT_LUA + "return record_event(KEYS[1], ARGV[1])"

# action -> the body keys it must carry (docs/developers/label-studio-protocol.md, section 6)
ACTIONS: dict[str, tuple[str, ...]] = {
    "ANNOTATION_CREATED": ("annotation", "task", "project"),
    "ANNOTATION_UPDATED": ("annotation", "task", "project"),
    "ANNOTATIONS_CREATED": ("annotation", "project"),
    "ANNOTATIONS_DELETED": ("annotations", "project"),
    "TASKS_CREATED": ("tasks", "project"),
    "TASKS_DELETED": ("tasks", "project"),
    "PROJECT_UPDATED": ("project",),
    "START_TRAINING": ("project",),
    "LABEL_LINK_CREATED": ("project",),
    "LABEL_LINK_UPDATED": ("project",),
    "LABEL_LINK_DELETED": ("project",),
}

_ANNOTATION_KEYS = ("id", "result", "completed_by", "was_cancelled", "ground_truth", "task",
                    "created_at", "updated_at", "lead_time")


def parse_event(body) -> dict:
    """The event to record, or InvalidInput naming what is wrong."""
    if not isinstance(body, dict):
        raise InvalidInput("webhook body must be a JSON object")
    action = body.get("action")
    if not isinstance(action, str) or action not in ACTIONS:  # a list/dict action is unhashable
        raise InvalidInput(f"unknown webhook action {action!r}; known: {', '.join(sorted(ACTIONS))}")
    missing = [key for key in ACTIONS[action] if key not in body]
    if missing:
        raise InvalidInput(f"{action} event without {', '.join(missing)}")
    event = {"action": action, "project": project_id(body["project"]), "received_at": time.time()}
    if "annotation" in body:
        event["annotation"] = _annotation(action, body["annotation"])
    if "task" in body:
        event["task"] = _task(action, body["task"])
    if "annotations" in body:
        event["annotations"] = _ids(action, "annotations", body["annotations"])
    if "tasks" in body:
        event["tasks"] = _tasks(action, body["tasks"])
    return event


def _annotation(action: str, annotation) -> dict:
    if isinstance(annotation, list):  # ANNOTATIONS_CREATED may carry several
        return [_annotation(action, a) for a in annotation]
    if not isinstance(annotation, dict):
        raise InvalidInput(f"{action}: \"annotation\" must be an object with an integer id")
    _id(action, annotation.get("id"), "annotation.id")
    for key in ("task", "completed_by"):  # optional here; a vote needs completed_by (backend/votes/store.py)
        value = annotation.get(key)
        _id(action, value.get("id") if isinstance(value, dict) else value, f"annotation.{key}", optional=True)
    if not isinstance(annotation.get("result", []), list):
        raise InvalidInput(f"{action}: annotation {annotation['id']} has a result that is not a list")
    return {key: annotation.get(key) for key in _ANNOTATION_KEYS if key in annotation}


def _task(action: str, task, field: str = "task") -> dict:
    if not isinstance(task, dict):
        raise InvalidInput(f"{action}: \"{field}\" must be an object with an integer id")
    return {"id": _id(action, task.get("id"), f"{field}.id"), "data": task.get("data")}


def _ids(action: str, key: str, items) -> list[int]:
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise InvalidInput(f"{action}: \"{key}\" must be a list of objects with integer ids")
    return [_id(action, item.get("id"), f"{key}[{n}].id") for n, item in enumerate(items)]


def _id(action: str, value, field: str, optional: bool = False) -> int | None:
    if optional and value is None:
        return None
    try:
        return require_id(value, field)
    except DomainError as exc:
        raise InvalidInput(f"{action}: {exc}") from None


def _tasks(action: str, tasks) -> list[dict]:
    if not isinstance(tasks, list):
        raise InvalidInput(f"{action}: \"tasks\" must be a list")
    return [_task(action, t, f"tasks[{n}]") for n, t in enumerate(tasks)]


def event_json(event: dict) -> str:
    """The text of the audit stream entry's "event" field."""
    return json.dumps(event, separators=(",", ":"))


def record_event(client: redis.Redis, event: dict) -> str:
    """Append to the audit stream of recent events; returns the entry id."""
    return client.register_script(_RECORD)(keys=[keys.EVENTS], args=[event_json(event)])
