"""Whether a project's suggestions reach Label Studio at all, and of which task types.

A version whose task heads never saw a labelled image answers near-uniform classes that hardly
depend on the image (the demo suggested "low / amusement" for every photograph), and random
suggestions anchor annotators: worse than none. So by default `/predict` sends none (`[]` per
task) until the project serves a trained version, and `/setup` and the log say why;
AESEMO_SUGGEST_UNTRAINED sends them anyway, for demos and tests.

A trained version suggests a task type (aesthetic, emotion) only when its held-out evidence shows
the suggestions beat the trivial answer (`evidence_problem`); the other type may still be
suggested. AESEMO_SUGGESTION_GATE=0 switches that check off.
"""
from __future__ import annotations

import logging
import math
import threading

from backend.votes.control import is_control_task


log = logging.getLogger(__name__)

# ends the name of every base version: the name Label Studio shows must not pass for a trained model's
UNTRAINED_SUFFIX = "-untrained"
WITHHELD_FIELD = "no_suggestions"  # in /setup's and /predict's answers; Label Studio reads neither


def withheld_reason(settings, version: str, trained: bool) -> str | None:
    """Why `version`'s suggestions are not sent; None when they are."""
    if trained or settings.suggest_untrained:
        return None
    return (f"model version {version} was never trained on labelled images, so its suggestions would be "
            f"random; none are sent until the project has a trained version: label at least "
            f"{settings.min_training_labels} tasks (agreed by consensus) and train (Label Studio's "
            f"\"Start Training\", the admin page, or POST /projects/<id>/train), or register a trained "
            f"base model (aesemo base set DIR, or AESEMO_BASE_MODEL); "
            f"AESEMO_SUGGEST_UNTRAINED=1 sends them anyway")


class WithheldLog:
    """One log line per project and version: Label Studio calls /setup and /predict many times a minute."""

    def __init__(self):
        self._logged: set[tuple[str | None, str]] = set()
        self._lock = threading.Lock()

    def note(self, project: str | None, version: str, reason: str) -> None:
        with self._lock:
            if (project, version) in self._logged:
                return
            self._logged.add((project, version))
        log.warning("project %s: no suggestions: %s", project if project is not None else "(none given)", reason)


TASK_TYPES = ("aesthetic", "emotion")
WITHHELD_TYPES_FIELD = "withheld_types"  # {task type: why} in /setup's and /predict's answers


def withheld_types(settings, meta: dict) -> dict[str, str]:
    """{task type: why} for each type a trained version may not suggest, {} when it may suggest
    both (or the gate is off, AESEMO_SUGGESTION_GATE). An untrained version is judged whole, by
    `withheld_reason`. See `evidence_problem` for the rule."""
    from model.version import is_trained  # torch: not for the stack's import of this module
    if not settings.suggestion_gate or not is_trained(meta):
        return {}
    metrics = meta.get("metrics") or {}
    problems = {task: evidence_problem(metrics.get(task)) for task in TASK_TYPES}
    return {task: why for task, why in problems.items() if why}


def evidence_problem(metrics: dict | None) -> str | None:
    """Why a task type's held-out evidence does not show that its suggestions beat the trivial
    answer, None when it does. The rule: the lower end of the 95 % interval of the held-out
    accuracy must be above the majority-class rate of the same held-out tasks (what answering
    the most common class for every task would score). The interval is Wilson's score interval
    for a binomial share rather than a percentile bootstrap: the bootstrap collapses to a point
    when every held-out task is right (8 of 8 would count as certain), Wilson's does not (8 of 8
    gives 0.68 to 1). On a few held-out tasks no accuracy clears a lopsided class balance; the
    interval narrows as the held-out set grows."""
    confusion = (metrics or {}).get("confusion")
    rows = [sum(row) for row in confusion or []]
    n = sum(rows)
    if not n:
        return "no held-out evidence: the version was scored on no held-out task of this type"
    right = sum(confusion[i][i] for i in range(len(confusion)))
    low, high = wilson_interval(right, n)
    majority = max(rows) / n
    if low > majority:
        return None
    return (f"held-out accuracy {right / n:.2f} (95 % interval {low:.2f}-{high:.2f}, {n} tasks) is not above "
            f"{majority:.2f}, the share of the most common class on the same tasks")


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's score interval of a binomial share (95 % for the default z)."""
    share, spread = successes / n, z * z / n
    centre = (share + spread / 2) / (1 + spread)
    half = z * math.sqrt(share * (1 - share) / n + spread / (4 * n)) / (1 + spread)
    return max(0.0, centre - half), min(1.0, centre + half)


def shown_result(result, task, labels, withheld: dict[str, str], control_fraction: float):
    """What Label Studio gets for a task: nothing to show for a control task (its score stays, so
    the least-certain ordering still places it), else the result less the withheld types."""
    if result and task is not None and is_control_task(task, control_fraction):
        return {**result, "result": []}
    return without_withheld(result, labels, withheld)


def without_withheld(result: dict, labels, withheld: dict[str, str]) -> dict:
    """A Label Studio prediction less the choices of withheld task types; its score stays (the
    task's certainty over both heads), so the least-certain ordering still places the task."""
    if not withheld or not result:
        return result
    controls = {labels.aesthetic_control: "aesthetic", labels.emotion_control: "emotion"}
    kept = [r for r in result.get("result", []) if controls.get(r.get("from_name")) not in withheld]
    return {**result, "result": kept}
