"""What suggestions do to the training set, and what the consensus guard gives back: simulated
annotators of known accuracy label simulated tasks (each with a true aesthetic class, 2 classes,
and emotion, 8); some of them accept a shown suggestion unchanged, in about a second; the
suggestions come from a weak model. The project's own code decides: backend.votes.consensus's
compute with the default policy (majority, 3 annotators, share >= 0.5), backend.votes.control's
control tasks, backend.votes.anchoring's figures.

    .venv/bin/python benchmarks/anchoring.py [--tasks 3000 --seeds 5 --stampers 2]

No image is drawn and no network runs: an image only matters here through what each annotator
and the model answer for it, so a task is its true classes, the model is right on a task with
its known accuracy per task type (else a uniformly wrong class), and an annotator is right with
theirs, independently of the suggestion unless they are a rubber stamper shown one.

Three runs on the same tasks, annotators and model answers:
  none      no suggestions: every vote is the annotator's own judgement;
  unguarded suggestions on all but the control tasks, every vote counted (count_fast_agreement);
  guarded   the same votes, with the default policy: a vote equal to the suggestion, made in under
            rubber_stamp_seconds, is set aside.
In every run a task still `waiting` (too few counted votes) gets one more vote from an annotator
who has not labelled it, until it has enough or nobody is left: what Label Studio does when the
project asks for more annotations on open tasks. The table gives the accuracy of the agreed
labels against the truth (what training learns), how many tasks agreed, and the votes spent.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.core.consensus_policy import Policy
from backend.votes.anchoring import anchoring
from backend.votes.consensus import compute
from backend.votes.control import is_control_task
from backend.votes.store import DIMENSIONS, Vote

CLASSES = {"aesthetic": ("high", "low"),
           "emotion": ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")}
# user id -> accuracy per task type
ANNOTATORS = {11: {"aesthetic": 0.90, "emotion": 0.75}, 12: {"aesthetic": 0.85, "emotion": 0.70},
              13: {"aesthetic": 0.85, "emotion": 0.70}, 14: {"aesthetic": 0.80, "emotion": 0.65},
              15: {"aesthetic": 0.80, "emotion": 0.60}, 16: {"aesthetic": 0.75, "emotion": 0.60}}
STAMPER_ORDER = (12, 15, 14, 11, 13, 16)   # the first --stampers of these rubber-stamp
MODEL = {"aesthetic": 0.65, "emotion": 0.35}   # the weak model's accuracy per task type
HONEST_SECONDS, SPREAD = 8.0, 0.5   # an honest annotator's median lead_time, and its log-normal spread
RUNS = ("none", "unguarded", "guarded")


class Crowd:
    """Every answer drawn once per seed, so the three runs differ only in what they show and count."""

    def __init__(self, tasks: int, seed: int, stampers: set[int], control_fraction: float, stamp_seconds: float):
        rng = np.random.default_rng(seed)
        self.tasks, self.stampers = list(range(1, tasks + 1)), stampers
        self.truth = {d: rng.integers(0, len(CLASSES[d]), tasks) for d in DIMENSIONS}
        self.model = {d: _noisy(rng, self.truth[d], MODEL[d], len(CLASSES[d])) for d in DIMENSIONS}
        self.own = {(a, d): _noisy(rng, self.truth[d], ANNOTATORS[a][d], len(CLASSES[d]))
                    for a in ANNOTATORS for d in DIMENSIONS}
        self.seconds = {a: np.exp(rng.normal(np.log(stamp_seconds if a in stampers else HONEST_SECONDS), SPREAD,
                                             tasks)) for a in ANNOTATORS}
        self.order = [rng.permutation(list(ANNOTATORS)).tolist() for _ in self.tasks]   # who labels each task next
        self.control = {t for t in self.tasks if is_control_task(t, control_fraction)}

    def vote(self, task: int, annotator: int, suggest: bool) -> Vote:
        i = task - 1
        shown = None
        if suggest and task not in self.control:
            shown = {"version": "simulated", "how": "prefilled",
                     **{d: CLASSES[d][self.model[d][i]] for d in DIMENSIONS}}
        followed = shown is not None and annotator in self.stampers
        labels = {d: shown[d] if followed else CLASSES[d][self.own[annotator, d][i]] for d in DIMENSIONS}
        return Vote(annotation=task * 100 + annotator, task=task, annotator=annotator, updated_at="",
                    updated_us=1, labels=labels, lead_time=float(self.seconds[annotator][i]), shown=shown)

    def model_on_control(self) -> dict[int, dict]:
        return {t: {d: CLASSES[d][self.model[d][t - 1]] for d in DIMENSIONS} for t in self.control}


def _noisy(rng, truth: np.ndarray, accuracy: float, k: int) -> np.ndarray:
    """`truth` where a draw is right (probability `accuracy`), else one of the other k-1 classes."""
    wrong = (truth + rng.integers(1, k, len(truth))) % k
    return np.where(rng.random(len(truth)) < accuracy, truth, wrong)


def run(crowd: Crowd, name: str, policy: Policy) -> dict:
    """Votes until no task waits for one it can get; the agreed labels' accuracy and what it cost."""
    suggest, counting = name != "none", replace_policy(policy, name)
    votes = [crowd.vote(t, crowd.order[t - 1][j], suggest) for t in crowd.tasks for j in range(policy.min_annotators)]
    asked = dict.fromkeys(crowd.tasks, policy.min_annotators)
    while True:
        result = compute(votes, CLASSES, counting, tasks=crowd.tasks)
        waiting = {t for d in DIMENSIONS for t, c in result[d].items() if c.state == "waiting"}
        more = [t for t in sorted(waiting) if asked[t] < len(ANNOTATORS)]
        if not more:
            break
        for t in more:
            votes.append(crowd.vote(t, crowd.order[t - 1][asked[t]], suggest))
            asked[t] += 1
    out = {"votes": len(votes), "result": result, "all_votes": votes, "policy": counting}
    for d in DIMENSIONS:
        agreed = [(t, c.label) for t, c in result[d].items() if c.state == "agreed"]
        right = sum(label == CLASSES[d][crowd.truth[d][t - 1]] for t, label in agreed)
        out[d] = {"accuracy": right / len(agreed) if agreed else float("nan"), "agreed": len(agreed)}
    return out


def replace_policy(policy: Policy, name: str) -> Policy:
    return Policy(**{**policy.to_dict(), "count_fast_agreement": name == "unguarded"})


def flagged(crowd: Crowd, outcome: dict, control_fraction: float) -> tuple[dict[str, set[int]], dict]:
    """Task type -> the annotators the anchoring figures flag as rubber-stamping; the figures."""
    figures = anchoring(outcome["all_votes"], outcome["result"], CLASSES, control_fraction,
                        crowd.model_on_control(), outcome["policy"].rubber_stamp_seconds)
    found = {d: {int(a) for a, f in figures[d]["annotators"].items() if f["rubber_stamping"]} for d in DIMENSIONS}
    return found, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--stampers", type=int, default=2, help="how many of the 6 annotators rubber-stamp")
    parser.add_argument("--control-fraction", type=float, default=0.1)
    parser.add_argument("--stamp-seconds", type=float, default=1.2, help="a rubber stamper's median lead_time")
    args = parser.parse_args()
    stampers = set(STAMPER_ORDER[:args.stampers])
    policy = Policy()
    started = time.perf_counter()
    rows = {name: [] for name in RUNS}
    singled_out, last_figures = [], {}
    for seed in range(args.seeds):
        crowd = Crowd(args.tasks, seed, stampers, args.control_fraction, args.stamp_seconds)
        for name in RUNS:
            outcome = run(crowd, name, policy)
            rows[name].append(outcome)
            if name != "none":
                found, last_figures[name] = flagged(crowd, outcome, args.control_fraction)
                singled_out.append(all(found[d] == stampers for d in DIMENSIONS))
    print_header(args, stampers, policy)
    print_runs(rows)
    print(f"\nThe anchoring figures flag exactly the rubber stampers in {sum(singled_out)} of {len(singled_out)} "
          f"runs with suggestions (both task types).")
    print_figures(last_figures["guarded"], stampers)
    for name, figures in last_figures.items():
        project = figures["aesthetic"]["project"]
        print(f"{name}: the consensus equals the suggestion on {_pct(project['consensus_equals_suggestion']['share'])} "
              f"of the agreed suggested tasks; the model would have been right on "
              f"{_pct(project['model_right_on_control']['share'])} of the agreed control tasks (aesthetic)")
    print(f"\n{time.perf_counter() - started:.0f} s")


def print_header(args, stampers: set[int], policy: Policy) -> None:
    accuracies = ", ".join(f"{a}{'*' if a in stampers else ''}: {ANNOTATORS[a]['aesthetic']:.2f}/"
                           f"{ANNOTATORS[a]['emotion']:.2f}" for a in ANNOTATORS)
    print(f"{args.tasks} tasks x {args.seeds} seeds; annotators (aesthetic/emotion accuracy, * rubber-stamps): "
          f"{accuracies}; model {MODEL['aesthetic']:.2f}/{MODEL['emotion']:.2f}; control tasks "
          f"{args.control_fraction:.0%}; rubber stampers' median time {args.stamp_seconds:g} s; policy majority, "
          f"{policy.min_annotators} annotators, share >= {policy.min_agreement}, rubber_stamp_seconds "
          f"{policy.rubber_stamp_seconds:g}\n")


def print_runs(rows: dict) -> None:
    def mean(name, key, d=None):
        values = [r[d][key] if d else r[key] for r in rows[name]]
        return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    print("| run | aesthetic accuracy | aesthetic agreed | emotion accuracy | emotion agreed | votes |")
    print("|---|---|---|---|---|---|")
    for name in RUNS:
        cells = []
        for d in DIMENSIONS:
            accuracy, spread = mean(name, "accuracy", d)
            cells += [f"{100 * accuracy:.1f} ± {100 * spread:.1f} %", f"{mean(name, 'agreed', d)[0]:.0f}"]
        print(f"| {name} | {' | '.join(cells)} | {mean(name, 'votes')[0]:.0f} |")
    for d in DIMENSIONS:
        base = mean("none", "accuracy", d)[0]
        print(f"\n{d}: the unguarded loop loses {100 * (base - mean('unguarded', 'accuracy', d)[0]):.1f} points, "
              f"the guarded one {100 * (base - mean('guarded', 'accuracy', d)[0]):.1f}", end="")
    print()


def print_figures(figures: dict, stampers: set[int]) -> None:
    print("\nAnchoring figures of the last guarded run (aesthetic; * rubber-stamps):\n")
    print("| annotator | agreement, control | agreement, suggested | accepted unchanged | expected | "
          "median time | flagged |")
    print("|---|---|---|---|---|---|---|")
    for user, f in figures["aesthetic"]["annotators"].items():
        print(f"| {user}{'*' if int(user) in stampers else ''} | {_pct(f['control_agreement']['share'])} | "
              f"{_pct(f['suggested_agreement']['share'])} | {_pct(f['accepted']['share'])} | "
              f"{_pct(f['expected_acceptance'])} | {f['median_seconds']:.1f} s | "
              f"{'yes' if f['rubber_stamping'] else 'no'} |")
    print()


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


if __name__ == "__main__":
    main()
