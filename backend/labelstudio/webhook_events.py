"""`/webhook`: check a Label Studio event and record it for the workers; never train inline.

Label Studio waits 1 s for the answer, never retries, and blocks the annotator's save
meanwhile, so this does one Redis write. The audit stream (`aesemo:events`) is read by people
and tests, never by the backend itself: the votes already hold what counts, and Label Studio's
export is the full record. So an entry keeps what an audit needs (the action, the project, ids,
authors, times, annotation results) and never the project object (it carries the project token)
or task data, and is bounded in size: see EVENT_BYTES_MAX and EVENTS_KEPT.
"""
from __future__ import annotations

import json
import time

import redis

from backend.core import keys
from backend.core.errors import DomainError, InvalidInput
from backend.core.ids import require_id
from backend.labelstudio.projects import project_id

# The stream's bound: EVENTS_KEPT entries of at most EVENT_BYTES_MAX bytes of event text, and
# Redis's overhead per entry (about 310 bytes measured, Redis 6.2): STREAM_MEMORY_MAX at most,
# 42 MiB measured. A larger event is kept as its ids and a note saying how large it was
# (`cut_event`): IDS_KEPT of each list of ids, then their count.
EVENTS_KEPT = 10_000
EVENT_BYTES_MAX = 4096
IDS_KEPT = 20
STREAM_MEMORY_MAX = EVENTS_KEPT * (EVENT_BYTES_MAX + 512)  # 44 MiB

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
    kept = {key: annotation[key] for key in _ANNOTATION_KEYS if key in annotation}
    for key in ("task", "completed_by"):  # exports nest the user (name, email): its id is enough
        if isinstance(kept.get(key), dict):
            kept[key] = kept[key].get("id")
    return kept


def _task(action: str, task, field: str = "task") -> dict:
    """The task's id: its data (the image URL) goes into the votes, not the audit stream."""
    if not isinstance(task, dict):
        raise InvalidInput(f"{action}: \"{field}\" must be an object with an integer id")
    return {"id": _id(action, task.get("id"), f"{field}.id")}


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
    """The text of the audit stream entry's "event" field: at most EVENT_BYTES_MAX bytes (ASCII,
    json.dumps escapes the rest), the event cut down to its ids when it is larger."""
    text = json.dumps(event, separators=(",", ":"))
    if len(text) <= EVENT_BYTES_MAX:
        return text
    return json.dumps(cut_event(event, len(text)), separators=(",", ":"))


def cut_event(event: dict, size: int) -> dict:
    """A too large event as the stream keeps it: its action, project, time and ids (IDS_KEPT of
    each list, then the list's length), and why the rest is not there. Ids are integers below
    2**63 (parse_event checked them), so this stays far below EVENT_BYTES_MAX."""
    cut = {key: event[key] for key in ("action", "project", "received_at")}
    cut["cut"] = (f"the event's {size} bytes are over the {EVENT_BYTES_MAX} an audit entry keeps: "
                  f"only its ids are kept (Label Studio's export has the rest)")
    annotation = event.get("annotation")
    if isinstance(annotation, list):
        cut["annotation"] = [_annotation_ids(a) for a in annotation[:IDS_KEPT]]
        cut["annotation_count"] = len(annotation)
    elif annotation is not None:
        cut["annotation"] = _annotation_ids(annotation)
    if "task" in event:
        cut["task"] = event["task"]  # {"id": ...}
    for key in ("annotations", "tasks"):
        if key in event:
            cut[key], cut[f"{key}_count"] = event[key][:IDS_KEPT], len(event[key])
    return cut


def _annotation_ids(annotation: dict) -> dict:
    return {key: annotation[key] for key in ("id", "task", "completed_by") if key in annotation}


def record_event(client: redis.Redis, event: dict) -> str:
    """Append to the audit stream of recent events, capped at EVENTS_KEPT (approximately: whole
    listpack nodes, which hold one such entry each at Redis's default 4 KB a node); returns the
    entry id."""
    return client.xadd(keys.EVENTS, {"event": event_json(event)}, maxlen=EVENTS_KEPT, approximate=True)
