"""Annotating in a real Label Studio as several people, and waiting on the backend's answers:
helpers shared by the end-to-end tests."""
from __future__ import annotations

import time
import uuid

from backend.votes.consensus import STATES
from ls_server import LabelStudioServer


def result(aesthetic: str, emotion: str) -> list[dict]:
    return [
        {"from_name": "aesthetic", "to_name": "image", "type": "choices", "value": {"choices": [aesthetic]}},
        {"from_name": "emotion", "to_name": "image", "type": "choices", "value": {"choices": [emotion]}},
    ]


def states(**counts: int) -> dict:
    return {s: counts.get(s, 0) for s in STATES}


def wait_until(fetch, check, timeout: float = 15.0, interval: float = 0.2):
    """Call ``fetch()`` until ``check(value)`` holds or ``timeout`` passes; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if check(value) or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class Annotator:
    """A user made through Label Studio's signup form, annotating with their own token."""

    def __init__(self, ls: LabelStudioServer, name: str):
        self.email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
        self.token = ls.signup_user(self.email, f"pw-{uuid.uuid4().hex}")
        self.id = ls.whoami(token=self.token)["id"]
        self.ls = ls

    def annotate(self, task_id: int, aesthetic: str, emotion: str) -> dict:
        return self.ls.create_annotation(task_id, result(aesthetic, emotion), token=self.token, lead_time=2.0)

    def skip(self, task_id: int) -> dict:
        return self.ls.create_annotation(task_id, [], token=self.token, was_cancelled=True)

    def update(self, annotation_id: int, aesthetic: str, emotion: str) -> dict:
        return self.ls.update_annotation(annotation_id, result(aesthetic, emotion), token=self.token)

    def delete(self, annotation_id: int) -> None:
        self.ls.delete_annotation(annotation_id, token=self.token)
