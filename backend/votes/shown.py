"""What annotators were shown as the model's suggestion, per task: what the serving side wrote
(`remember_shown`) and what a task's annotators see from then on (`shown_for`).

A suggestion is {"version", "aesthetic", "emotion", "how"}: the model version, the class shown
for each task type (None: none shown for it), and how it was shown: "text" (written beside the
image; the annotator chooses their own answer) or "prefilled" (Label Studio ticked the choices
from a prediction).
"""
from __future__ import annotations

import json

import redis

from backend.core import keys

HOWS = ("text", "prefilled")


def remember_shown(client: redis.Redis, project: str, task: int, shown: dict | None) -> None:
    """What the task's annotators are shown from now on; None: nothing (the record goes)."""
    key = keys.shown_suggestions(project)
    if shown is None:
        client.hdel(key, task)
        return
    if shown.get("how") not in HOWS:
        raise ValueError(f"a suggestion's \"how\" is one of {HOWS}, got {shown.get('how')!r}")
    client.hset(key, task, json.dumps(shown, sort_keys=True))


def shown_for(client: redis.Redis, project: str, task: int) -> dict | None:
    """What the task's annotators are shown; None: nothing."""
    value = client.hget(keys.shown_suggestions(project), task)
    return json.loads(value) if value is not None else None
