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

import functools
import logging
import threading

import numpy as np

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

    def note(self, project: str | None, version: str, message: str) -> None:
        """Log `message` ("no suggestions: why") once for this project and version."""
        with self._lock:
            if (project, version) in self._logged:
                return
            self._logged.add((project, version))
        log.warning("project %s: %s", project if project is not None else "(none given)", message)


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
    answer, None when it does. The trivial answer is the class most common on the same held-out
    tasks, answered every time. The rule: over resamples of the held-out tasks, the difference
    between the version's accuracy and that class's share must lie above 0 in 97.5 % of them
    (the lower end of its 95 % percentile interval). Both sides are estimated from the same few
    tasks, so they are resampled together: comparing an interval of the accuracy with the
    majority share taken as exact suggested a type no better than the trivial answer 7-10 % of
    the time at 50 to 1000 held-out tasks; this rule stays under 3 % at every size (simulated,
    docs/admins/versions.md). On a few held-out tasks no version clears a lopsided class balance
    (8 of 8 right with 6 of them one class: withheld)."""
    confusion = (metrics or {}).get("confusion")
    rows = [sum(row) for row in confusion or []]
    n = sum(rows)
    if not n:
        return "no held-out evidence: the version was scored on no held-out task of this type"
    low, high = difference_interval(tuple(tuple(int(v) for v in row) for row in confusion))
    if low > 0:
        return None
    accuracy = sum(confusion[i][i] for i in range(len(confusion))) / n
    return (f"held-out accuracy {accuracy:.2f} against {max(rows) / n:.2f} for answering the most common class "
            f"every time: the 95 % interval of the difference, {low:+.2f} to {high:+.2f} on {n} tasks, does "
            "not lie above 0")


@functools.lru_cache(maxsize=256)
def difference_interval(confusion: tuple[tuple[int, ...], ...], resamples: int = 1000,
                        seed: int = 0) -> tuple[float, float]:
    """The 95 % percentile interval of (accuracy - share of the class most common on these tasks)
    over `resamples` multinomial resamples of the confusion matrix's cells (seeded: the same
    answer every time; cached: /predict asks for every request)."""
    cells = np.asarray(confusion, dtype=float)
    n, k = int(cells.sum()), len(cells)
    common = int(cells.sum(axis=1).argmax())
    draws = np.random.default_rng(seed).multinomial(n, (cells / n).ravel(), size=resamples).reshape(-1, k, k)
    difference = (np.trace(draws, axis1=1, axis2=2) - draws[:, common, :].sum(axis=1)) / n
    low, high = np.percentile(difference, [2.5, 97.5])
    return float(low), float(high)


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
