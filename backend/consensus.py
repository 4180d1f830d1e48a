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
        if not isinstance(self.min_annotators, int) or self.min_annotators < 1:
            raise ValueError(f"min_annotators must be a positive integer, got {self.min_annotators!r}")
        if not 0.0 <= float(self.min_agreement) <= 1.0:
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
    """dimension -> task -> consensus. `tasks` adds tasks known to have no votes."""
    by_task = latest_per_annotator(votes)
    all_tasks = sorted(set(by_task) | set(tasks or ()))
    result = {}
    for dimension in DIMENSIONS:
        names = tuple(classes[dimension])
        table = {t: [(v.annotator, v.labels.get(dimension), v.ground_truth) for v in by_task.get(t, [])
                     if v.labels.get(dimension) in names] for t in all_tasks}
        posteriors = _dawid_skene(table, names) if policy.method == "dawid_skene" else None
        result[dimension] = {t: _decide(t, dimension, table[t], names, policy,
                                        posteriors.get(t) if posteriors else None) for t in all_tasks}
    return result


def _decide(task, dimension, votes, names, policy, posterior) -> TaskConsensus:
    chosen = {annotator: label for annotator, label, _ in votes}
    if not votes:
        return TaskConsensus(task, dimension, "no_votes")
    counts = np.array([sum(1 for _, label, _ in votes if label == n) for n in names], dtype=float)
    shares = counts / counts.sum()
    truth = [label for _, label, gt in votes if gt]
    if truth:  # ground truth decides; the latest ground-truth vote wins if several
        label = truth[-1]
        return TaskConsensus(task, dimension, "agreed", label, {label: 1.0},
                             float(shares[names.index(label)]), chosen)
    soft = posterior if posterior is not None else shares
    soft_map = {n: float(p) for n, p in zip(names, soft) if p > 0}
    if len(votes) < policy.min_annotators:
        return TaskConsensus(task, dimension, "waiting", None, soft_map, float(shares.max()), chosen)
    top = np.flatnonzero(np.isclose(soft, soft.max()))
    label = names[int(top[0])]
    tied = len(top) > 1
    strong = float(soft.max()) >= policy.min_agreement
    if strong and (not tied or policy.tie_break == "soft"):
        return TaskConsensus(task, dimension, "agreed", label, soft_map, float(shares[int(top[0])]), chosen)
    return TaskConsensus(task, dimension, "disputed", None, soft_map, float(shares.max()), chosen)


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

    posterior = np.zeros((n_t, k))
    np.add.at(posterior, (ti, li), 1.0)
    posterior /= posterior.sum(axis=1, keepdims=True)
    previous = None
    for _ in range(iterations):
        # M step: class priors and each annotator's confusion matrix (smoothed so no zero logs)
        prior = posterior.mean(axis=0) + 1e-9
        confusion = np.full((n_a, k, k), 0.01)
        np.add.at(confusion, (ai, slice(None), li), posterior[ti])
        confusion /= confusion.sum(axis=2, keepdims=True)
        # E step: log posterior of each task's true class given all its votes
        log_post = np.tile(np.log(prior / prior.sum()), (n_t, 1))
        np.add.at(log_post, ti, np.log(confusion[ai, :, li]))
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
