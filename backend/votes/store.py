"""Annotation events -> vote records in Redis, one per annotation id (the keys: votes,
vote_times, task:{t}, tombstones, deleted_tasks, images in backend/core/keys.py).

A record replaces the stored one only if its `updated_at` is not older, inside one Lua script,
so repeated events change nothing and reordered events end where the ordered stream ends.
Times are compared as instants (integers), never as text: `12:00:05Z` is older than
`12:00:05.3Z`, and `13:00:05+01:00` is `12:00:05Z`.
"""
from __future__ import annotations

import gc
import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, UTC

import redis

from backend.core import keys
from backend.core.errors import InvalidInput
from backend.core.ids import as_id, shown
from backend.labelstudio.label_config import ProjectLabels, task_image_url

log = logging.getLogger(__name__)

DIMENSIONS = ("aesthetic", "emotion")

# One vote, atomically, in order: KEYS as `vote_keys` lists them, then task:{t}; ARGV as
# `vote_args` lists them. Times are microseconds since the epoch (instant_us).
_APPLY = """
local votes, times, tombstones, deleted_tasks, images, task_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, updated_at, record, task, image = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('SISMEMBER', deleted_tasks, task) == 1 then return 'task_deleted' end
-- the task exists whatever becomes of this annotation: a delete that overtook its create
-- must leave the same tasks known as the ordered stream does
if image ~= '' then redis.call('HSET', images, task, image) end
if redis.call('SISMEMBER', tombstones, id) == 1 then return 'deleted' end
local current = redis.call('HGET', times, id)
if current and tonumber(current) > tonumber(updated_at) then return 'stale' end
local old = redis.call('HGET', votes, id)
if old == record then return 'same' end
redis.call('HSET', votes, id, record)
redis.call('HSET', times, id, updated_at)
redis.call('SADD', task_key, id)
if old then return 'changed' end
return 'added'
"""


_NOTE_TASKS = """
local added = 0
for i = 1, #ARGV, 2 do
  if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then
    added = added + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return added
"""


def vote_keys(project: str) -> list[str]:
    """The project's keys apply_vote takes first, in its order (task:{t} comes after them)."""
    return [keys.votes(project), keys.vote_times(project), keys.tombstones(project), keys.deleted_tasks(project),
            keys.images(project)]


def vote_args(vote: Vote, image_url: str | None) -> list:
    """apply_vote's arguments: annotation id, updated_at (microseconds since the epoch), record,
    task id and image URL ('' for none)."""
    return [vote.annotation, vote.updated_us, vote.record(), vote.task, image_url or ""]


_DELETE = """
redis.call('SADD', KEYS[3], ARGV[1])
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return false end
local task = cjson.decode(old)['task']
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SREM', ARGV[2] .. task, ARGV[1])
return tostring(task)
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# What instant_us takes: a date, and optionally a time with seconds, a fraction and `Z` or an
# offset. datetime.fromisoformat alone is too lenient: Python 3.11's skips a NUL before the zone
# and takes week dates and basic formats, text that is then stored and shown as it came.
_ISO_8601 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
                       r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,9})?)?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?)?")


def instant_us(text) -> int:
    """Microseconds since the epoch of an ISO 8601 time, with or without a fraction, `Z` or an
    offset (none: UTC, as Label Studio's are). ValueError when it is not one."""
    if not isinstance(text, str):
        raise ValueError(f"expected an ISO 8601 text, got {type(text).__name__}")
    if not _ISO_8601.fullmatch(text):
        raise ValueError(f"not an ISO 8601 date and time: {text[:40]!r}")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


@contextmanager
def gc_paused():
    """The cyclic GC off for a bulk build of many small objects (every few hundred new dicts
    it would otherwise walk, in its older generations, every object the process holds)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class Vote:
    annotation: int
    task: int
    annotator: int
    updated_at: str         # as Label Studio sent it
    labels: dict            # dimension -> class name, or None when the annotation has none
    ground_truth: bool = False
    cancelled: bool = False
    problems: tuple = ()    # choices that are not in the label config, kept for the admin
    updated_us: int = None  # updated_at in microseconds since the epoch: what orders votes
    # what the annotator was shown and how long they took, to measure what suggestions do to votes
    parent_prediction: int | None = None  # the prediction Label Studio pre-filled the annotation from
    lead_time: float | None = None        # seconds on the task, as Label Studio counted them (None: not sent)
    shown: dict | None = None             # the model's suggestion the annotator saw (backend/votes/shown.py)
    equal: dict = field(init=False)       # task type -> whether the vote chose the class shown (types shown)

    def __post_init__(self):
        if self.updated_us is None:  # a vote built by hand: its instant from its time
            object.__setattr__(self, "updated_us", instant_us(self.updated_at))
        object.__setattr__(self, "equal", equal_to_shown(self.labels, self.shown))

    def record(self) -> str:
        return json.dumps({"annotation": self.annotation, "task": self.task, "annotator": self.annotator,
                           "updated_at": self.updated_at, "updated_us": self.updated_us, "labels": self.labels,
                           "ground_truth": self.ground_truth, "cancelled": self.cancelled,
                           "problems": list(self.problems), "parent_prediction": self.parent_prediction,
                           "lead_time": self.lead_time, "shown": self.shown, "equal": self.equal},
                          sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_record(text: str) -> Vote:
        return Vote.from_dict(json.loads(text))

    @staticmethod
    def from_dict(data: dict) -> Vote:
        """A decoded record (taken over, not copied). A complete one, as record() writes them,
        fills the instance's __dict__ directly, skipping the frozen dataclass's __init__ (one
        object.__setattr__ call per field): all_votes builds hundreds of thousands."""
        if data.keys() == _VOTE_FIELDS:
            data["problems"] = tuple(data["problems"])
            vote = object.__new__(Vote)
            vote.__dict__.update(data)
            return vote
        data["problems"] = tuple(data.get("problems", ()))
        data.pop("equal", None)  # derived from labels and shown
        return Vote(**data)

    def is_vote(self) -> bool:
        return not self.cancelled and any(v is not None for v in self.labels.values())

    def fast_agreement(self, dimension: str, seconds: float) -> bool:
        """Whether the vote chose the class it was shown for `dimension` in less than `seconds`:
        no evidence the annotator judged the image. A ground-truth vote is never one."""
        return (self.equal.get(dimension, False) and self.lead_time is not None and self.lead_time < seconds
                and not self.ground_truth)


def equal_to_shown(labels: dict, shown: dict | None) -> dict[str, bool]:
    """Task type -> whether `labels` chose the class `shown` suggested, for the types it suggested."""
    if not shown:
        return {}
    return {d: labels.get(d) == shown[d] for d in DIMENSIONS if shown.get(d) is not None}


_VOTE_FIELDS = frozenset(Vote.__dataclass_fields__)


def vote_from_annotation(annotation: dict, task_id, labels: ProjectLabels) -> Vote:
    """InvalidInput when the annotation lacks what a vote needs (id, task, author, result)."""
    # the same bounds as webhook_events.parse_event: these go into Redis keys, Lua arguments and sorts
    if not isinstance(annotation, dict) or as_id(annotation.get("id")) is None:
        found = annotation.get("id") if isinstance(annotation, dict) else annotation
        raise InvalidInput(f"annotation without a valid \"id\" (a positive integer below 2**63), got {shown(found)}")
    where = f"annotation {annotation['id']}"
    author = annotation.get("completed_by")
    if isinstance(author, dict):  # exports nest the user object
        author = author.get("id")
    if as_id(author) is None:
        raise InvalidInput(f"{where} has no valid \"completed_by\" user id (a positive integer below 2**63), "
                           f"got {shown(author)}")
    task = task_id if task_id is not None else annotation.get("task")
    if as_id(task) is None:
        raise InvalidInput(f"{where} has no valid task id (a positive integer below 2**63), got {shown(task)}")
    if "result" not in annotation or not isinstance(annotation["result"], list):
        raise InvalidInput(f"{where} has no \"result\" list")
    cancelled = bool(annotation.get("was_cancelled"))
    chosen, problems = (dict.fromkeys(DIMENSIONS), []) if cancelled else _choices(annotation["result"], labels)
    if problems:  # one line per annotation, however many regions it has
        log.warning("%s on task %s: %s", where, task, "; ".join(problems))
    updated_at, updated_us = _updated(annotation, where)
    return Vote(annotation=annotation["id"], task=task, annotator=author, updated_at=updated_at,
                updated_us=updated_us, labels=chosen, ground_truth=bool(annotation.get("ground_truth")),
                cancelled=cancelled, problems=tuple(problems),
                parent_prediction=_parent_prediction(annotation, where), lead_time=_lead_time(annotation, where))


MAX_LEAD_TIME_S = 10 ** 7  # about four months: a bound on what is stored, not a judgement of the annotator


def _parent_prediction(annotation: dict, where: str) -> int | None:
    """The prediction the annotation was pre-filled from (Label Studio's `parent_prediction`)."""
    value = annotation.get("parent_prediction")
    if value is None:
        return None
    if as_id(value) is None:
        raise InvalidInput(f"{where}: \"parent_prediction\" must be a prediction id or null, got {shown(value)}")
    return int(value)


def _lead_time(annotation: dict, where: str) -> float | None:
    """Seconds the annotator spent (Label Studio's `lead_time`); None when absent."""
    value = annotation.get("lead_time")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_LEAD_TIME_S:
        raise InvalidInput(f"{where}: \"lead_time\" must be a number of seconds in [0, {MAX_LEAD_TIME_S}], "
                           f"got {shown(value)}")
    return float(value)


def _updated(annotation: dict, where: str) -> tuple[str, int]:
    """updated_at (else created_at) as sent and as an instant; none at all is the oldest."""
    for name in ("updated_at", "created_at"):
        value = annotation.get(name)
        if value is None or value == "":
            continue
        try:
            return value, instant_us(value)
        except ValueError:
            raise InvalidInput(f"{where}: \"{name}\" is not an ISO 8601 time: {repr(value)[:80]}") from None
    return "", 0


def chosen_classes(result, labels: ProjectLabels) -> dict[str, str | None]:
    """Task type -> the class a Label Studio result (an annotation's or a prediction's) chose."""
    return _choices(result if isinstance(result, list) else [], labels)[0]


PROBLEMS_KEPT = 3  # a vote names its first few problems and counts the rest


def _choices(result: list, labels: ProjectLabels) -> tuple[dict, list[str]]:
    """The class chosen per dimension, and what was wrong: at most PROBLEMS_KEPT problems, each
    value cut short (`shown`), then how many more; a record and its log line stay small however
    many regions, and however long a value, an annotation holds."""
    controls = {labels.aesthetic_control: ("aesthetic", labels.aesthetic_classes),
                labels.emotion_control: ("emotion", labels.emotion_classes)}
    chosen, problems, more = dict.fromkeys(DIMENSIONS), [], 0
    for region in result:
        # a list/dict from_name is unhashable: `in controls` would raise TypeError (a 500)
        if not isinstance(region, dict) or not isinstance(region.get("from_name"), str) \
                or region["from_name"] not in controls:
            continue
        dimension, classes = controls[region["from_name"]]
        value = region.get("value")
        values = (value.get("choices") if isinstance(value, dict) else None) or []
        if isinstance(values, list) and len(values) == 1 and values[0] in classes:
            chosen[dimension] = values[0]
        elif len(problems) == PROBLEMS_KEPT:
            more += 1
        elif not isinstance(values, list) or len(values) != 1:  # "x", 5, {...}: no .get / len / [0]
            problems.append(f"{region['from_name']}: expected one choice, got {shown(values)}")
        else:
            problems.append(f"{region['from_name']}: choice {shown(values[0])} is not in the label config")
    if more:
        problems.append(f"{more} more region(s) without one known choice")
    return chosen, problems


class VoteStore:
    def __init__(self, client: redis.Redis):
        self.redis = client
        self._apply = client.register_script(_APPLY)
        self._delete = client.register_script(_DELETE)

    def apply(self, project: str, vote: Vote, image_url: str | None = None) -> str:
        """'added', 'changed', 'same', 'stale', 'deleted' (tombstoned) or 'task_deleted'."""
        names = vote_keys(project) + [keys.task_votes(project, vote.task)]
        args = vote_args(vote, image_url)
        return self._apply(keys=names, args=args)

    def delete(self, project: str, annotation_id: int) -> int | None:
        """Removes the vote and remembers the id; returns its task, or None if never seen."""
        task = self._delete(keys=[keys.votes(project), keys.vote_times(project), keys.tombstones(project)],
                            args=[annotation_id, keys.task_votes_prefix(project)])
        return int(task) if task is not None else None

    def delete_tasks(self, project: str, task_ids: list[int]) -> int:
        removed = 0
        for task in task_ids:
            annotations = self.redis.smembers(keys.task_votes(project, task))
            pipe = self.redis.pipeline()
            pipe.sadd(keys.deleted_tasks(project), task)
            if annotations:
                pipe.hdel(keys.votes(project), *annotations)
                pipe.hdel(keys.vote_times(project), *annotations)
            pipe.delete(keys.task_votes(project, task))
            pipe.hdel(keys.images(project), task)
            pipe.hdel(keys.shown_suggestions(project), task)
            pipe.execute()
            removed += len(annotations)
        return removed

    def task_votes(self, project: str, task: int) -> list[Vote]:
        ids = self.redis.smembers(keys.task_votes(project, task))
        if not ids:
            return []
        return [Vote.from_record(r) for r in self.redis.hmget(keys.votes(project), list(ids)) if r]

    def all_votes(self, project: str) -> list[Vote]:
        records = self.redis.hvals(keys.votes(project))
        if not records:
            return []
        # one json.loads of all records joined as one array, not one call per record, with the
        # cyclic GC paused: hundreds of thousands of new dicts and votes otherwise
        # trigger collections that walk every object the process holds, each time
        joined = (b"[" + b",".join(records) + b"]") if isinstance(records[0], bytes) \
            else "[" + ",".join(records) + "]"
        with gc_paused():
            return [Vote.from_dict(data) for data in json.loads(joined)]

    def note_tasks(self, project: str, images: dict[int, str]) -> int:
        """Tasks Label Studio named (in /predict, TASKS_CREATED) become known, so the consensus
        counts them as `no_votes` before anyone labels them. A known task keeps its image URL
        (a vote's is the one trained on) and a deleted task stays deleted. Returns how many were new."""
        if not images:
            return 0
        args = [item for task, url in images.items() for item in (task, url or "")]
        return int(self.redis.eval(_NOTE_TASKS, 2, keys.images(project), keys.deleted_tasks(project), *args))

    def note_task_list(self, project: str, tasks, image_key: str | None) -> int:
        """`note_tasks` for tasks as Label Studio lists them (id and data, the image under
        `image_key`; None: the label config is unknown, the URL comes later); anything that is not
        a task with an id is skipped."""
        images = {}
        for task in tasks if isinstance(tasks, list) else ():
            if isinstance(task, dict) and as_id(task.get("id")) is not None:
                images[task["id"]] = task_image_url(task, image_key) or ""
        return self.note_tasks(project, images)

    def image_urls(self, project: str) -> dict[int, str]:
        return {int(t): url for t, url in self.redis.hgetall(keys.images(project)).items()}

    def replace_all(self, project: str, votes: list[Vote], images: dict[int, str]) -> dict:
        """Make the stored votes exactly `votes` (a resync); returns added/changed/removed counts."""
        current = {int(k): v for k, v in self.redis.hgetall(keys.votes(project)).items()}
        wanted = {v.annotation: v for v in votes}
        added = [a for a in wanted if a not in current]
        changed = [a for a in wanted if a in current and current[a] != wanted[a].record()]
        removed = [a for a in current if a not in wanted]
        pipe = self.redis.pipeline()
        for a in removed:
            old = Vote.from_record(current[a])
            pipe.hdel(keys.votes(project), a)
            pipe.hdel(keys.vote_times(project), a)
            pipe.srem(keys.task_votes(project, old.task), a)
        for a in added + changed:
            vote = wanted[a]
            pipe.hset(keys.votes(project), a, vote.record())
            pipe.hset(keys.vote_times(project), a, vote.updated_us)
            pipe.sadd(keys.task_votes(project, vote.task), a)
        # Label Studio's export is the truth: what it holds exists again
        if wanted:
            pipe.srem(keys.tombstones(project), *wanted)
            pipe.srem(keys.deleted_tasks(project), *{v.task for v in votes})
        if images:
            pipe.hset(keys.images(project), mapping={str(t): u for t, u in images.items()})
        pipe.execute()
        return {"added": len(added), "changed": len(changed), "removed": len(removed)}
