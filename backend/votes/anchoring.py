"""The suggestions' measured pull on a project's votes (docs/admins/consensus.md, "Measured
anchoring"): per annotator and task type, agreement with the consensus on control tasks (no
suggestion) against suggested tasks, the share of suggestions accepted unchanged and how much of
it independent judgement explains, and the median time on a task; per project, how often the
consensus equals the suggestion on suggested tasks against how often the model would have been
right on control tasks.

An annotator who judges each image on its own accepts a suggestion about as often as they and
the model are right together, or wrong the same way: with their agreement `a` on control tasks,
the model's `m` there and `k` classes, a share a·m + (1-a)(1-m)/(k-1). Accepting clearly more
(EXCESS_FLAGGED) is following the suggestion rather than the image: such an annotator is flagged
as rubber-stamping.
"""
from __future__ import annotations

import statistics

from backend.votes.consensus import TaskConsensus, _latest
from backend.votes.control import is_control_task
from backend.votes.store import DIMENSIONS, Vote

EXCESS_FLAGGED = 0.2   # accepted share above independent judgement that flags an annotator
MIN_VOTES_FLAGGED = 10  # suggested votes (and control votes) an annotator needs before a flag is raised


def anchoring(votes: list[Vote], result: dict[str, dict[int, TaskConsensus]], classes: dict,
              control_fraction: float, model_on_control: dict[int, dict], rubber_stamp_seconds: float) -> dict:
    """Task type -> {"project": ..., "annotators": {user id (text): ...}}. `model_on_control`:
    control task -> task type -> the class the model would have suggested (where known)."""
    latest = _latest(votes)
    control = {t for t in {v.task for v in latest} if is_control_task(t, control_fraction)}
    seconds = _median_seconds(latest)
    out = {}
    for dimension in DIMENSIONS:
        decided = {t: c.label for t, c in result[dimension].items() if c.state == "agreed"}
        by_annotator, suggestion = _split(latest, dimension, control)
        project = _project_figures(suggestion, decided, control, model_on_control, dimension)
        k = len(classes[dimension])
        annotators = {}
        for annotator, (on_control, suggested) in sorted(by_annotator.items()):
            figures = _annotator_figures(on_control, suggested, dimension, decided, rubber_stamp_seconds)
            annotators[str(annotator)] = {**figures, **_independence(figures, project, k),
                                          "median_seconds": seconds.get(annotator)}
        out[dimension] = {"project": project, "annotators": annotators}
    return out


def _split(latest: list[Vote], dimension: str, control: set) -> tuple[dict, dict[int, str]]:
    """Annotator -> (their votes on control tasks, their votes shown a suggestion), among those that
    chose a class for `dimension`; and task -> the class suggested for it."""
    by_annotator: dict[int, tuple[list[Vote], list[Vote]]] = {}
    suggestion: dict[int, str] = {}
    for vote in latest:
        if vote.labels.get(dimension) is None:
            continue
        lists = by_annotator.setdefault(vote.annotator, ([], []))
        shown = vote.shown.get(dimension) if vote.shown else None
        if shown is not None:
            suggestion[vote.task] = shown
            lists[1].append(vote)
        elif vote.task in control:
            lists[0].append(vote)
    return by_annotator, suggestion


def _share(hits: list[bool]) -> dict:
    return {"n": len(hits), "share": sum(hits) / len(hits) if hits else None}


def _project_figures(suggestion: dict[int, str], decided: dict, control: set, model_on_control: dict,
                     dimension: str) -> dict:
    model = {t: (model_on_control.get(t) or {}).get(dimension) for t in control}
    return {"consensus_equals_suggestion": _share([decided[t] == s for t, s in suggestion.items() if t in decided]),
            "model_right_on_control": _share([decided[t] == m for t, m in model.items()
                                              if m is not None and t in decided]),
            "control_tasks": len(control), "suggested_tasks": len(suggestion)}


def _annotator_figures(on_control: list[Vote], suggested: list[Vote], dimension: str, decided: dict,
                       seconds: float) -> dict:
    return {
        "control_agreement": _share([v.labels[dimension] == decided[v.task] for v in on_control if v.task in decided]),
        "suggested_agreement": _share([v.labels[dimension] == decided[v.task] for v in suggested
                                       if v.task in decided]),
        "accepted": _share([v.equal[dimension] for v in suggested]),
        "fast_accepted": _share([v.fast_agreement(dimension, seconds) for v in suggested]),
    }


def _independence(figures: dict, project: dict, k: int) -> dict:
    """The acceptance independent judgement explains, what exceeds it, and the flag."""
    a, m = figures["control_agreement"]["share"], project["model_right_on_control"]["share"]
    accepted = figures["accepted"]
    if a is None or m is None or accepted["share"] is None or k < 2:
        return {"expected_acceptance": None, "excess_acceptance": None, "rubber_stamping": None}
    expected = a * m + (1 - a) * (1 - m) / (k - 1)
    excess = accepted["share"] - expected
    enough = accepted["n"] >= MIN_VOTES_FLAGGED and figures["control_agreement"]["n"] >= MIN_VOTES_FLAGGED
    return {"expected_acceptance": expected, "excess_acceptance": excess,
            "rubber_stamping": (excess >= EXCESS_FLAGGED) if enough else None}


def _median_seconds(latest: list[Vote]) -> dict[int, float]:
    times: dict[int, list[float]] = {}
    for vote in latest:
        if vote.lead_time is not None:
            times.setdefault(vote.annotator, []).append(vote.lead_time)
    return {annotator: statistics.median(values) for annotator, values in times.items()}
