"""How often the suggestion gate (backend/serving/suggestions.py) lets a task type through, on
simulated held-out sets, in one run:

    .venv/bin/python benchmarks/suggestion_gate.py [--trials 500]

For each held-out size, `--trials` confusion matrices are drawn for a version exactly as right as
answering the most common class every time (every suggestion it lets through is a false one: the
goal is at most 2.5 %) and for one 0.2 more accurate (the share it lets through is the gate's
power). Two class balances: aesthetic 55/45 and the 8 emotions with the most common at 30 %.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.serving.suggestions import evidence_problem

BALANCES = {"aesthetic 55/45": (0.55, 0.45),
            "emotion, 8 classes, top 30 %": (0.3, 0.2, 0.15, 0.1, 0.1, 0.07, 0.05, 0.03)}
SIZES = (8, 20, 50, 100, 300, 1000)


def simulated_confusion(rng: np.random.Generator, shares: np.ndarray, n: int, accuracy: float) -> list:
    classes = len(shares)
    truth = rng.choice(classes, n, p=shares)
    wrong = (truth + rng.integers(1, classes, n)) % classes
    predicted = np.where(rng.random(n) < accuracy, truth, wrong)
    matrix = np.zeros((classes, classes), dtype=int)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix.tolist()


def suggested_share(rng, shares, n: int, accuracy: float, trials: int) -> float:
    return sum(evidence_problem({"confusion": simulated_confusion(rng, shares, n, accuracy)}) is None
               for _ in range(trials)) / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    print(f"share of {args.trials} simulated held-out sets whose type the gate suggests")
    print("| task type | version | " + " | ".join(f"n={n}" for n in SIZES) + " |")
    print("|---|---|" + "---|" * len(SIZES))
    for name, balance in BALANCES.items():
        shares = np.array(balance)
        for label, accuracy in (("no better than the trivial answer", shares.max()), ("0.2 better", shares.max() + 0.2)):
            cells = [f"{suggested_share(rng, shares, n, accuracy, args.trials):.3f}" for n in SIZES]
            print(f"| {name} | {label} (accuracy {accuracy:.2f}) | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
