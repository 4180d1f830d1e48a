"""Control tasks: a stable share of each project's tasks never gets a suggestion, so what
annotators do without one can be compared with what they do with one (the suggestions' pull).
Which tasks is a hash of the task id: the same in every process and every run, and not a choice
anyone makes by looking at the task."""
from __future__ import annotations

import hashlib


def is_control_task(task_id: int, fraction: float) -> bool:
    """Whether the task is one of the `fraction` of tasks that get no suggestion."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(str(int(task_id)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction
