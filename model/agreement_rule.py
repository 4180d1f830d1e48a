"""How many generated images a runtime's agreement check needs to tell a good variant from a bad one.

A variant's outputs agree with float32 PyTorch's top-1 on each image or not; taking the images as
independent draws, the count that agrees out of n is binomial with the variant's true agreement
p. The check passes a task when at least k of n images agree. A variant that truly agrees on a
share `bad` of images should rarely pass, one that agrees on `good` should rarely fail: n and k
are the fewest images, and the least count, for which both error rates, computed exactly from the
binomial distribution, stay within bounds. Both tasks must pass, so a good variant's chance to
fail is split between the two (half each); a bad task on its own fails the variant.
For the default threshold 0.99 (bad: 0.97): 604 images, of which 593 must agree; see
docs/developers/inference.md for the figures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# the check tells a variant at the threshold from one this much below it
AGREEMENT_MARGIN = 0.02
MAX_ERROR = 0.05  # chance to pass a bad variant; the same, over both tasks, to fail a good one
MAX_IMAGES = 1000  # a bound on the check's cost: 1000 generated 224x224 images are 150 MB
TASK_COUNT = 2


@dataclass(frozen=True)
class AgreementRule:
    images: int
    least_agreeing: int   # per task
    good: float
    bad: float
    pass_if_bad: float    # chance that a task agreeing on a share `bad` passes
    fail_if_good: float   # chance that a task agreeing on a share `good` fails

    def passes(self, agreeing: int) -> bool:
        return agreeing >= self.least_agreeing

    def describe(self) -> str:
        return (f"at least {self.least_agreeing} of {self.images} agree per task: a task agreeing on "
                f"{self.bad:.1%} passes with probability {self.pass_if_bad:.3f}, one on {self.good:.1%} "
                f"fails with {self.fail_if_good:.3f}")


def at_least(n: int, k: int, p: float) -> float:
    """P(X >= k) for X binomial(n, p)."""
    return float(_pmf(n, p)[max(k, 0):].sum())


def _pmf(n: int, p: float) -> np.ndarray:
    """The binomial(n, p) probabilities of 0..n, through log-gamma (exact up to rounding; no overflow)."""
    i = np.arange(n + 1)
    with np.errstate(divide="ignore"):
        log = _LOG_FACTORIAL[n] - _LOG_FACTORIAL[i] - _LOG_FACTORIAL[n - i] + _xlogy(i, p) + _xlogy(n - i, 1 - p)
    return np.exp(log)


def _xlogy(x: np.ndarray, y: float) -> np.ndarray:
    return np.where(x == 0, 0.0, x * np.log(y) if y > 0 else -np.inf)


_LOG_FACTORIAL = np.array([math.lgamma(m + 1) for m in range(MAX_IMAGES + 1)])


@lru_cache(maxsize=16)
def agreement_rule(threshold: float, margin: float = AGREEMENT_MARGIN, max_error: float = MAX_ERROR) -> AgreementRule:
    """The fewest images n, with the least agreeing count k, such that a task agreeing on
    `threshold - margin` passes with probability <= max_error and one agreeing on `threshold`
    fails with probability <= max_error / 2. Where MAX_IMAGES are not enough (thresholds far
    below 0.98), MAX_IMAGES with the k that keeps the first bound; the rule states its rates.
    A threshold of 0 passes every variant (k = 0), one above 1 none (k = n + 1)."""
    good, bad = threshold, max(threshold - margin, 0.0)
    if good <= 0:
        return AgreementRule(1, 0, good, bad, 1.0, 0.0)
    if good > 1:
        return AgreementRule(1, 2, good, bad, 0.0, 1.0)
    for n in range(1, MAX_IMAGES + 1):
        rule = _rule_for(n, good, bad, max_error)
        if rule is not None and (rule.fail_if_good <= max_error / TASK_COUNT or n == MAX_IMAGES):
            return rule
    raise AssertionError("unreachable: k = n + 1 is never chosen, k <= n always exists for bad < 1")


def _rule_for(n: int, good: float, bad: float, max_error: float) -> AgreementRule | None:
    """With n images, the smallest k at which a task agreeing on `bad` passes with probability
    <= max_error; None when even k = n passes it more often."""
    pass_if_bad = np.cumsum(_pmf(n, bad)[::-1])[::-1]  # [k] = P(X >= k)
    allowed = np.flatnonzero(pass_if_bad <= max_error)
    if not len(allowed):
        return None
    k = int(allowed[0])
    return AgreementRule(n, k, good, bad, float(pass_if_bad[k]), 1 - at_least(n, k, good))
