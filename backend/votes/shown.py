"""What annotators were shown as the model's suggestion: per task, what the backend wrote
(`remember_shown`, called by the serving side when it writes a suggestion), and per vote, what
its annotator saw (`shown_of_vote`), recorded with the vote so that the consensus can tell a
confirmation from an independent judgement and the admin page can measure the suggestions' pull.

A suggestion is {"version", "aesthetic", "emotion", "how"}: the model version, the class shown
for each task type (None: none shown for it), and how it was shown: "text" (written beside the
image; the annotator clicks their own answer) or "prefilled" (Label Studio ticked the choices
from a prediction; the annotator may submit them as they are).

Which suggestion a vote saw:
* Label Studio's annotation names the prediction it was pre-filled from (`parent_prediction`):
  a pre-filled suggestion. Its classes are the prediction's own when Label Studio's export
  carries it (the resync), else what the backend remembered writing for the task, else unknown
  (None per type: the vote counts as shown a suggestion, never as equal to it).
* No `parent_prediction`: the task's remembered suggestion if it was shown as text; a remembered
  pre-fill was not shown (the project does not show predictions, or the annotator cleared them).
"""
from __future__ import annotations

import json
import logging

import redis

from backend.core import keys
from backend.core.ids import as_id
from backend.labelstudio.label_config import ProjectLabels
from backend.votes.store import DIMENSIONS, chosen_classes

log = logging.getLogger(__name__)

HOWS = ("text", "prefilled")
MAX_NAME_CHARS = 200   # a version or class name kept in a vote record: records stay small


def remember_shown(client: redis.Redis, project: str, task: int, shown: dict | None) -> None:
    """What the task's annotators are shown from now on; None: nothing (the record goes).
    ValueError for a `shown` that is not a suggestion."""
    remember_shown_many(client, project, {task: shown})


def remember_shown_many(client: redis.Redis, project: str, shown: dict[int, dict | None]) -> None:
    """`remember_shown` for many tasks (task -> suggestion or None) in one round trip."""
    key = keys.shown_suggestions(project)
    written = {task: json.dumps(checked_suggestion(s), sort_keys=True) for task, s in shown.items() if s is not None}
    gone = [task for task, s in shown.items() if s is None]
    pipe = client.pipeline()
    if written:
        pipe.hset(key, mapping=written)
    if gone:
        pipe.hdel(key, *gone)
    pipe.execute()


def shown_for(client: redis.Redis, project: str, task: int) -> dict | None:
    """What the task's annotators are shown (None: nothing, or a record that is no suggestion)."""
    return _decoded(client.hget(keys.shown_suggestions(project), task), project, task)


def shown_for_tasks(client: redis.Redis, project: str, tasks) -> dict[int, dict]:
    """`shown_for` of many tasks in one round trip: task -> suggestion, for those with one."""
    tasks = sorted(set(tasks))
    if not tasks:
        return {}
    values = client.hmget(keys.shown_suggestions(project), tasks)
    found = {task: _decoded(value, project, task) for task, value in zip(tasks, values)}
    return {task: suggestion for task, suggestion in found.items() if suggestion is not None}


def checked_suggestion(shown) -> dict:
    """`shown` as a suggestion record holds it; ValueError naming what is wrong."""
    if not isinstance(shown, dict):
        raise ValueError(f"a suggestion is an object, got {type(shown).__name__}")
    if shown.get("how") not in HOWS:
        raise ValueError(f"a suggestion's \"how\" is one of {HOWS}, got {str(shown.get('how'))[:40]!r}")
    checked = {"how": shown["how"]}
    for name in ("version",) + DIMENSIONS:
        value = shown.get(name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"a suggestion's {name!r} is a text or null, got {type(value).__name__}")
        checked[name] = value[:MAX_NAME_CHARS] if value is not None else None
    return checked


def _decoded(text, project: str, task) -> dict | None:
    if text is None:
        return None
    try:
        return checked_suggestion(json.loads(text))
    except ValueError as exc:  # json's errors are ValueErrors too
        log.warning("project %s task %s: stored suggestion ignored (%s)", project, task, exc)
        return None


def suggestion_of(prediction, labels: ProjectLabels, how: str) -> dict | None:
    """The suggestion a Label Studio prediction ({"result", "model_version"}) makes; None for
    one that chooses no class (a control task's, or one whose types are all withheld)."""
    if not isinstance(prediction, dict):
        return None
    classes = chosen_classes(prediction.get("result"), labels)
    if all(value is None for value in classes.values()):
        return None
    version = prediction.get("model_version")
    return checked_suggestion({"version": version if isinstance(version, str) else None, "how": how, **classes})


NOT_EXPORTED = object()  # the export does not carry the parent prediction: other sources say


def shown_of_vote(parent_prediction: int | None, remembered: dict | None, exported=NOT_EXPORTED) -> dict | None:
    """What a vote's annotator saw (the rules in the module's docstring). `remembered`: the
    task's `shown_for`; `exported`: the suggestion of the prediction `parent_prediction` names
    (None: it chose no class, so nothing was ticked), when Label Studio's export carries it."""
    if parent_prediction is None:
        return remembered if remembered is not None and remembered["how"] == "text" else None
    if exported is not NOT_EXPORTED:
        return {**exported, "how": "prefilled"} if exported is not None else None
    unknown = {"version": None, **dict.fromkeys(DIMENSIONS)}
    return {**(remembered or unknown), "how": "prefilled"}


def exported_parent(task: dict, parent_prediction: int | None, labels: ProjectLabels):
    """The suggestion of the prediction `parent_prediction` names, from a task of Label Studio's
    export (its `predictions` are objects there); NOT_EXPORTED when the task does not hold it."""
    predictions = task.get("predictions") if isinstance(task, dict) else None
    if parent_prediction is None or not isinstance(predictions, list):
        return NOT_EXPORTED
    for prediction in predictions:
        if isinstance(prediction, dict) and as_id(prediction.get("id")) == parent_prediction:
            return suggestion_of(prediction, labels, "prefilled")
    return NOT_EXPORTED
