"""From votes to one training label per task and dimension (the patent's "label with the
highest agreement"), with a per-project policy.

Majority vote: a task is `agreed` when at least `min_annotators` people voted, the top class is
unique and its share reaches `min_agreement`; `waiting` below the minimum; `disputed` on a tie
or a low share (ties become `agreed` with a soft label only with tie_break="soft"). A
ground-truth annotation decides its task. Dawid-Skene (1979) instead estimates each
annotator's confusion matrix by EM over the whole project and labels tasks by the posterior.

Written here rather than taken from crowd-kit: see the README (import cost, dependencies).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .votes import DIMENSIONS, Vote

STATES = ("no_votes", "waiting", "agreed", "disputed")
METHODS = ("majority", "dawid_skene")


@dataclass(frozen=True)
class Policy:
    method: str = "majority"
    min_annotators: int = 3
    min_agreement: float = 0.5
    tie_break: str = "unresolved"        # or "soft": a tie is agreed, trained on the split

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not isinstance(self.min_annotators, int) or isinstance(self.min_annotators, bool) \
                or self.min_annotators < 1:
            raise ValueError(f"min_annotators must be a positive integer, got {self.min_annotators!r}")
        # a number, not "0.5": a string would pass float() here and break every later comparison
        if not isinstance(self.min_agreement, (int, float)) or isinstance(self.min_agreement, bool) \
                or not 0.0 <= float(self.min_agreement) <= 1.0:
            raise ValueError(f"min_agreement must lie in [0, 1], got {self.min_agreement!r}")
        if self.tie_break not in ("unresolved", "soft"):
            raise ValueError(f"tie_break must be 'unresolved' or 'soft', got {self.tie_break!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TaskConsensus:
    task: int
    dimension: str
    state: str
    label: str | None = None
    soft: dict[str, float] = field(default_factory=dict)
    agreement: float = 0.0             # share of the votes that chose `label`
    votes: dict[int, str] = field(default_factory=dict)   # annotator -> class

    def to_dict(self) -> dict:
        return asdict(self)


def latest_per_annotator(votes: list[Vote]) -> dict[int, list[Vote]]:
    """task -> its votes, one per annotator (their latest: by updated_at, then annotation id)."""
    latest: dict[tuple[int, int], Vote] = {}
    for vote in votes:
        if not vote.is_vote():
            continue
        k = (vote.task, vote.annotator)
        if k not in latest or (vote.updated_at, vote.annotation) > (latest[k].updated_at, latest[k].annotation):
            latest[k] = vote
    by_task: dict[int, list[Vote]] = {}
    for vote in latest.values():
        by_task.setdefault(vote.task, []).append(vote)
    return by_task


def compute(votes: list[Vote], classes: dict[str, tuple[str, ...]], policy: Policy,
            tasks: list[int] | None = None) -> dict[str, dict[int, TaskConsensus]]:
    """dimension -> task -> consensus. `tasks` adds tasks known to have no votes.

    The decisions are taken on arrays over all tasks at once (100,000 tasks take about a
    second), then each task's result is built from its row."""
    by_task = latest_per_annotator(votes)
    all_tasks = sorted(set(by_task) | set(tasks or ()))
    result = {}
    for dimension in DIMENSIONS:
        names = tuple(classes[dimension])
        table = {t: [(v.annotator, v.labels.get(dimension), v.ground_truth) for v in by_task.get(t, [])
                     if v.labels.get(dimension) in names] for t in all_tasks}
        posteriors = _dawid_skene(table, names) if policy.method == "dawid_skene" else None
        result[dimension] = _decide_all(all_tasks, dimension, table, names, policy, posteriors)
    return result


def _decide_all(all_tasks, dimension, table, names, policy, posteriors) -> dict[int, TaskConsensus]:
    k, n_tasks = len(names), len(all_tasks)
    position = {name: i for i, name in enumerate(names)}
    counts = np.zeros((n_tasks, k))
    truth = np.full(n_tasks, -1)
    for row, task in enumerate(all_tasks):
        for _, label, ground_truth in table[task]:
            counts[row, position[label]] += 1
            if ground_truth:  # the latest ground-truth vote wins if several
                truth[row] = position[label]
    n_votes = counts.sum(axis=1)
    shares = counts / np.maximum(n_votes, 1)[:, None]
    soft = shares.copy()
    if posteriors:
        for row, task in enumerate(all_tasks):
            if task in posteriors:
                soft[row] = posteriors[task]
    top = soft.max(axis=1)
    at_top = np.isclose(soft, top[:, None])
    best = at_top.argmax(axis=1)                 # the first class (config order) at the top
    tied = at_top.sum(axis=1) > 1
    agreed = (top >= policy.min_agreement) & (~tied | (policy.tie_break == "soft"))
    state = np.where(n_votes == 0, 0, np.where(truth >= 0, 2, np.where(n_votes < policy.min_annotators, 1,
                                                                      np.where(agreed, 2, 3))))
    label_index = np.where(truth >= 0, truth, best)
    agreement = np.where(state == 2, shares[np.arange(n_tasks), label_index], shares.max(axis=1))

    out = {}
    soft_rows, states, labels, agreements = soft.tolist(), state.tolist(), label_index.tolist(), agreement.tolist()
    for row, task in enumerate(all_tasks):
        name = STATES[states[row]]
        if name == "no_votes":
            out[task] = TaskConsensus(task, dimension, name)
            continue
        label = names[labels[row]] if name == "agreed" else None
        soft_map = ({label: 1.0} if truth[row] >= 0 else
                    {n: p for n, p in zip(names, soft_rows[row]) if p > 0})
        out[task] = TaskConsensus(task, dimension, name, label, soft_map, agreements[row],
                                  {annotator: value for annotator, value, _ in table[task]})
    return out


def _dawid_skene(table: dict[int, list], names: tuple[str, ...], iterations: int = 100,
                 tolerance: float = 1e-7) -> dict[int, np.ndarray]:
    """Posterior class probabilities per task (Dawid & Skene 1979), started from majority vote."""
    rows = [(t, a, names.index(label)) for t, votes in table.items() for a, label, _ in votes]
    if not rows:
        return {}
    task_ids = sorted({t for t, _, _ in rows})
    annotator_ids = sorted({a for _, a, _ in rows})
    t_index = {t: i for i, t in enumerate(task_ids)}
    a_index = {a: i for i, a in enumerate(annotator_ids)}
    ti = np.array([t_index[t] for t, _, _ in rows])
    ai = np.array([a_index[a] for _, a, _ in rows])
    li = np.array([label for _, _, label in rows])
    n_t, n_a, k = len(task_ids), len(annotator_ids), len(names)

    posterior = np.bincount(ti * k + li, minlength=n_t * k).reshape(n_t, k).astype(float)
    posterior /= posterior.sum(axis=1, keepdims=True)
    cell = ai * k + li  # (annotator, observed label) of each vote
    previous = None
    for _ in range(iterations):
        # M step: class priors and each annotator's confusion matrix (smoothed so no zero logs);
        # bincount sums what np.add.at would, many times faster
        prior = posterior.mean(axis=0) + 1e-9
        confusion = np.stack([np.bincount(cell, weights=posterior[ti, j], minlength=n_a * k).reshape(n_a, k)
                              for j in range(k)], axis=1) + 0.01   # (annotator, true, observed)
        confusion /= confusion.sum(axis=2, keepdims=True)
        # E step: log posterior of each task's true class given all its votes
        log_confusion = np.log(confusion)
        log_post = np.stack([np.bincount(ti, weights=log_confusion[ai, j, li], minlength=n_t)
                             for j in range(k)], axis=1) + np.log(prior / prior.sum())
        log_post -= log_post.max(axis=1, keepdims=True)
        posterior = np.exp(log_post)
        posterior /= posterior.sum(axis=1, keepdims=True)
        if previous is not None and np.abs(posterior - previous).max() < tolerance:
            break
        previous = posterior
    return {t: posterior[t_index[t]] for t in task_ids}


def krippendorff_alpha(units: list[list[str]]) -> float | None:
    """Nominal Krippendorff's alpha over units (tasks) with any number of values each; units
    with fewer than two values do not count. None when nothing is pairable."""
    values = sorted({v for unit in units for v in unit})
    index = {v: i for i, v in enumerate(values)}
    coincidence = np.zeros((len(values), len(values)))
    for unit in units:
        m = len(unit)
        if m < 2:
            continue
        counts = np.zeros(len(values))
        for v in unit:
            counts[index[v]] += 1
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (m - 1)
    n = coincidence.sum()
    if n <= 1:
        return None
    marginals = coincidence.sum(axis=0)
    observed = n - np.trace(coincidence)
    expected = (n * n - (marginals ** 2).sum()) / (n - 1)
    if expected == 0:
        return 1.0
    return float(1.0 - observed / expected)


def summary(consensus: dict[str, dict[int, TaskConsensus]], classes: dict) -> dict:
    """Counts by state, label distribution, per-annotator agreement, and alpha per dimension."""
    out = {}
    for dimension, tasks in consensus.items():
        states = {s: 0 for s in STATES}
        labels = {n: 0 for n in classes[dimension]}
        agree: dict[int, list[int]] = {}
        for c in tasks.values():
            states[c.state] += 1
            if c.state == "agreed":
                labels[c.label] += 1
                for annotator, label in c.votes.items():
                    agree.setdefault(annotator, []).append(int(label == c.label))
        out[dimension] = {
            "tasks": states,
            "labels": labels,
            "annotators": {str(a): {"votes_on_agreed_tasks": len(v), "agreement": sum(v) / len(v)}
                           for a, v in sorted(agree.items())},
            "krippendorff_alpha": krippendorff_alpha([list(c.votes.values()) for c in tasks.values()]),
        }
    return out
