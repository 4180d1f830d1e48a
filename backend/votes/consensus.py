"""From votes to one training label per task and dimension (the patent's "label with the
highest agreement"), with a per-project policy.

Majority vote: a task is `agreed` when at least `min_annotators` people voted, the top class is
unique and its share reaches `min_agreement`; `waiting` below the minimum; `disputed` on a tie
or a low share (ties become `agreed` with a soft label only with tie_break="soft"). A
ground-truth annotation decides its task. Dawid-Skene (1979) instead estimates each
annotator's confusion matrix by EM over the whole project and labels tasks by the posterior.

Written here rather than taken from crowd-kit, which pulls in heavy dependencies
(docs/admins/consensus.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from backend.core.consensus_policy import Policy
from backend.votes.store import DIMENSIONS, Vote, gc_paused

STATES = ("no_votes", "waiting", "agreed", "disputed")
@dataclass
class TaskConsensus:
    task: int
    dimension: str
    state: str
    label: str | None = None
    soft: dict[str, float] = field(default_factory=dict)
    agreement: float = 0.0             # share of the votes that chose `label`
    votes: dict[int, str] = field(default_factory=dict)   # annotator -> class
    # annotator -> class of the votes that only confirmed the suggestion in a hurry, not counted
    # (the policy's count_fast_agreement)
    set_aside: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _latest(votes: list[Vote]) -> list[Vote]:
    """Each annotator's latest vote per task, in the order their (task, annotator) first appears."""
    latest: dict[tuple[int, int], Vote] = {}
    get = latest.get
    for vote in votes:
        if vote.cancelled:                      # vote.is_vote(), inlined: 300,000 calls cost
            continue
        for value in vote.labels.values():
            if value is not None:
                break
        else:
            continue
        k = (vote.task, vote.annotator)
        old = get(k)
        if old is None or (vote.updated_us, vote.annotation) > (old.updated_us, old.annotation):
            latest[k] = vote
    return list(latest.values())


def compute(votes: list[Vote], classes: dict[str, tuple[str, ...]], policy: Policy,
            tasks: list[int] | None = None) -> dict[str, dict[int, TaskConsensus]]:
    """dimension -> task -> consensus. `tasks` adds tasks known to have no votes.

    The votes become arrays once (task row, annotator, class index); the decisions and
    Dawid-Skene's EM run on arrays over all tasks at once, then each task's result is built
    from its row."""
    with gc_paused():       # 100,000 tasks: hundreds of thousands of new dicts and results
        return _compute(votes, classes, policy, tasks)


def _compute(votes, classes, policy, tasks) -> dict[str, dict[int, TaskConsensus]]:
    latest = _latest(votes)
    all_tasks = sorted({v.task for v in latest} | set(tasks or ()))
    task_array = np.array(all_tasks, dtype=np.int64)
    # the votes grouped by task (stable: within a task, the order of `latest`)
    latest.sort(key=lambda v: v.task)
    rows = np.searchsorted(task_array, np.array([v.task for v in latest], dtype=np.int64))
    annotators = np.array([v.annotator for v in latest], dtype=np.int64)
    ground_truth = np.array([v.ground_truth for v in latest], dtype=bool)
    chosen = [v.labels for v in latest]
    result = {}
    for dimension in DIMENSIONS:
        names = tuple(classes[dimension])
        position = {name: i for i, name in enumerate(names)}
        label = np.array([position.get(c.get(dimension), -1) for c in chosen], dtype=np.int64)
        fast = _fast_agreement(latest, dimension, policy)
        valid, aside = (label >= 0) & ~fast, (label >= 0) & fast
        votes_here = _Votes(rows[valid], annotators[valid], label[valid], ground_truth[valid])
        posteriors = _dawid_skene(votes_here, len(all_tasks), len(names)) \
            if policy.method == "dawid_skene" else None
        set_aside = _Votes(rows[aside], annotators[aside], label[aside], ground_truth[aside])
        result[dimension] = _decide_all(all_tasks, dimension, votes_here, names, policy, posteriors)
        _note_set_aside(result[dimension], all_tasks, set_aside, names)
    return result


def _fast_agreement(latest: list[Vote], dimension: str, policy: Policy) -> np.ndarray:
    """Which votes the policy sets aside on `dimension`: those that chose the class shown them in
    less than rubber_stamp_seconds (none when it counts them)."""
    if policy.count_fast_agreement:
        return np.zeros(len(latest), dtype=bool)
    seconds = policy.rubber_stamp_seconds
    return np.array([bool(v.equal) and v.fast_agreement(dimension, seconds) for v in latest], dtype=bool)


def _note_set_aside(decided: dict[int, TaskConsensus], all_tasks: list[int], aside: _Votes, names) -> None:
    """The set-aside votes beside each task's decision; a task that has only those waits for more."""
    for row, annotator, label in zip(aside.row.tolist(), aside.annotator.tolist(), aside.label.tolist()):
        task = decided[all_tasks[row]]
        task.set_aside[annotator] = names[label]
        if task.state == "no_votes":
            task.state = "waiting"


class _Votes:
    """One dimension's valid votes as arrays, grouped by task row (ascending)."""
    __slots__ = ("row", "annotator", "label", "ground_truth")

    def __init__(self, row, annotator, label, ground_truth):
        self.row, self.annotator, self.label, self.ground_truth = row, annotator, label, ground_truth


def _decide_all(all_tasks, dimension, votes: _Votes, names, policy,
                posteriors: tuple[np.ndarray, np.ndarray] | None) -> dict[int, TaskConsensus]:
    k, n_tasks = len(names), len(all_tasks)
    counts = np.bincount(votes.row * k + votes.label, minlength=n_tasks * k).reshape(n_tasks, k).astype(float)
    truth = np.full(n_tasks, -1)
    for row, label in zip(votes.row[votes.ground_truth].tolist(), votes.label[votes.ground_truth].tolist()):
        truth[row] = label   # the latest ground-truth vote wins if several
    n_votes = counts.sum(axis=1)
    shares = counts / np.maximum(n_votes, 1)[:, None]
    soft = shares.copy()
    if posteriors is not None:
        present, posterior = posteriors
        soft[present] = posterior
    top = soft.max(axis=1)
    at_top = np.isclose(soft, top[:, None])
    best = at_top.argmax(axis=1)                 # the first class (config order) at the top
    tied = at_top.sum(axis=1) > 1
    agreed = (top >= policy.min_agreement) & (~tied | (policy.tie_break == "soft"))
    state = np.where(n_votes == 0, 0, np.where(truth >= 0, 2, np.where(n_votes < policy.min_annotators, 1,
                                                                      np.where(agreed, 2, 3))))
    label_index = np.where(truth >= 0, truth, best)
    agreement = np.where(state == 2, shares[np.arange(n_tasks), label_index], shares.max(axis=1))

    # each task's votes: annotator -> class, from its slice of the (grouped) vote arrays
    bounds = np.searchsorted(votes.row, np.arange(n_tasks + 1)).tolist()
    vote_annotators, vote_names = votes.annotator.tolist(), [names[i] for i in votes.label.tolist()]
    out = {}
    soft_rows, states, labels, agreements = soft.tolist(), state.tolist(), label_index.tolist(), agreement.tolist()
    truths = truth.tolist()
    for row, task in enumerate(all_tasks):
        name = STATES[states[row]]
        if name == "no_votes":
            out[task] = TaskConsensus(task, dimension, name)
            continue
        label = names[labels[row]] if name == "agreed" else None
        soft_map = ({label: 1.0} if truths[row] >= 0 else
                    {n: p for n, p in zip(names, soft_rows[row]) if p > 0})
        lo, hi = bounds[row], bounds[row + 1]
        out[task] = TaskConsensus(task, dimension, name, label, soft_map, agreements[row],
                                  dict(zip(vote_annotators[lo:hi], vote_names[lo:hi])))
    return out


# plain EM steps before SQUAREM starts: extrapolating the first, long steps of EM can leap to
# another local maximum than the one plain EM reaches (seen on small random crowds)
_SQUAREM_AFTER = 10


def _dawid_skene(votes: _Votes, n_rows: int, k: int, iterations: int = 100,
                 tolerance: float = 1e-7) -> tuple[np.ndarray, np.ndarray] | None:
    """Posterior class probabilities (Dawid & Skene 1979), started from majority vote: the task
    rows that have votes, and their posteriors (one row each). None without votes.

    EM runs until one step moves no posterior by `tolerance` or more, or `iterations` E steps
    were spent. Its convergence is linear and slow with many classes (the 8 emotions of 100,000
    tasks needed over 200 plain steps to reach 1e-7), so the steps are accelerated by SQUAREM
    (Varadhan & Roland 2008): from two EM steps, a longer step along the same path, kept only
    if it does not lower the likelihood (the plain second step is taken otherwise). It starts
    after _SQUAREM_AFTER plain steps, so it ends where plain EM tends to: on the benchmark
    (100,000 tasks) the labels are those of 100 plain steps, and closer to those of plain EM
    run to convergence than 100 plain steps are, in about a third of the steps it needs.

    Arrays are class-major, (class, task) and (class, annotator * observed), so that every
    step over all tasks is an elementwise operation on long rows, and each E and M step is one
    gather and one bincount over (class, vote) pairs."""
    if not len(votes.row):
        return None
    present, task_index = np.unique(votes.row, return_inverse=True)
    model = _DawidSkeneModel(votes, task_index, len(present), k)
    counts = np.bincount(votes.label * model.n_t + task_index, minlength=k * model.n_t).reshape(k, model.n_t)
    posterior = _squarem(model, counts.astype(float) / counts.sum(axis=0), iterations, tolerance)
    return present, posterior.T


class _DawidSkeneModel:
    """The E and M steps over flat index arrays, class-major (see _dawid_skene)."""

    def __init__(self, votes: _Votes, task_index: np.ndarray, n_t: int, k: int):
        _, annotator_index = np.unique(votes.annotator, return_inverse=True)
        self.k, self.n_t, self.ti = k, n_t, task_index
        self.n_a = int(annotator_index.max()) + 1
        self.n_cells = self.n_a * k
        self.cell = annotator_index * k + votes.label              # (annotator, observed label) of each vote
        cols = np.arange(k)[:, None]
        self.m_index = (cols * self.n_cells + self.cell).ravel()   # (true class, cell) of each (class, vote)
        self.e_index = (cols * n_t + task_index).ravel()           # (true class, task) of each (class, vote)

    def m_step(self, posterior: np.ndarray) -> np.ndarray:
        """Log class priors and log confusion matrices (smoothed so no zero logs), packed in
        one vector: k priors, then (true class, annotator, observed) log P(observed | true)."""
        k = self.k
        prior = posterior.mean(axis=1) + 1e-9
        confusion = np.bincount(self.m_index, weights=posterior.take(self.ti, axis=1).ravel(),
                                minlength=k * self.n_cells)
        confusion = confusion.reshape(k, self.n_a, k) + 0.01
        confusion /= confusion.sum(axis=2, keepdims=True)
        return np.concatenate([np.log(prior / prior.sum()), np.log(confusion).ravel()])

    def e_step(self, theta: np.ndarray) -> tuple[np.ndarray, float]:
        """Posteriors of each task's true class given its votes, and the objective EM raises:
        the log likelihood plus the log of the Dirichlet prior that the 0.01 smoothing is."""
        k, n_t = self.k, self.n_t
        log_cell = theta[k:].reshape(k, self.n_cells)
        log_post = np.bincount(self.e_index, weights=log_cell.take(self.cell, axis=1).ravel(),
                               minlength=k * n_t).reshape(k, n_t)
        log_post += theta[:k, None]
        top = log_post.max(axis=0)
        log_post -= top
        posterior = np.exp(log_post, out=log_post)
        norm = posterior.sum(axis=0)
        posterior /= norm
        return posterior, float(top.sum() + np.log(norm).sum() + 0.01 * log_cell.sum())

    def normalized(self, theta: np.ndarray) -> np.ndarray:
        """An extrapolated parameter vector made distributions again."""
        k = self.k
        log_prior = theta[:k] - np.logaddexp.reduce(theta[:k])
        log_cell = theta[k:].reshape(k, self.n_a, k)
        log_cell = log_cell - np.logaddexp.reduce(log_cell, axis=2, keepdims=True)
        return np.concatenate([log_prior, log_cell.ravel()])


def _squarem(model: _DawidSkeneModel, start: np.ndarray, iterations: int, tolerance: float) -> np.ndarray:
    """EM from the posteriors `start`, accelerated by SQUAREM as _dawid_skene says; the posteriors."""
    theta = model.m_step(start)
    posterior, _ = model.e_step(theta)
    steps, step_max = 1, 1.0
    while steps < iterations:
        # a plain EM step from theta, and the convergence test on it: SQUAREM's extrapolated
        # steps only speed up the walk, so convergence is judged on the plain EM map
        theta1 = model.m_step(posterior)
        posterior1, _ = model.e_step(theta1)
        steps += 1
        converged = np.abs(posterior1 - posterior).max() < tolerance
        if converged or steps >= iterations or steps < _SQUAREM_AFTER:
            theta, posterior = theta1, posterior1
            if converged:
                break
            continue
        theta2 = model.m_step(posterior1)
        posterior2, objective2 = model.e_step(theta2)
        steps += 1
        if np.abs(posterior2 - posterior1).max() < tolerance or steps >= iterations:
            posterior = posterior2
            break
        # SQUAREM (scheme S3) from theta and its two EM successors; the step length is bounded,
        # the bound grown while steps are taken and shrunk when one is refused (as SQUAREM does)
        r, v = theta1 - theta, theta2 - 2 * theta1 + theta
        alpha = min(-np.sqrt((r @ r) / (v @ v)), -1.0) if v @ v > 0 else -1.0
        if alpha <= -step_max:
            alpha = -step_max
            step_max *= 4.0
        theta3 = model.normalized(theta - 2 * alpha * r + alpha * alpha * v)
        posterior3, objective3 = model.e_step(theta3)
        steps += 1
        if objective3 >= objective2:            # False for NaN: then the plain step is kept
            theta, posterior = theta3, posterior3
        else:
            theta, posterior = theta2, posterior2
            step_max = max(1.0, step_max / 4.0)
    return posterior


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
        states = dict.fromkeys(STATES, 0)
        labels = dict.fromkeys(classes[dimension], 0)
        agree: dict[int, list[int]] = {}
        set_aside = 0
        for c in tasks.values():
            states[c.state] += 1
            set_aside += len(c.set_aside)
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
            "set_aside_votes": set_aside,
        }
    return out
