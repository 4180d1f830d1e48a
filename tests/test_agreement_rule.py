"""The rule for how many generated images a runtime's agreement check needs (model/agreement_rule.py),
its error rates recomputed exactly (rational arithmetic) from the binomial distribution."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest

from model.agreement_rule import MAX_ERROR, TASK_COUNT, agreement_rule


def at_least_exactly(n: int, k: int, p: Fraction) -> Fraction:
    """P(X >= k) for X binomial(n, p), exactly."""
    return sum((math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1)), Fraction(0))


def test_the_check_tells_97_from_99_percent_with_both_error_rates_within_bounds():
    rule = agreement_rule(0.99)
    assert (rule.images, rule.least_agreeing) == (604, 593)
    pass_if_bad = at_least_exactly(rule.images, rule.least_agreeing, Fraction(97, 100))
    fail_if_good = 1 - at_least_exactly(rule.images, rule.least_agreeing, Fraction(99, 100))
    assert pass_if_bad <= Fraction(MAX_ERROR) and fail_if_good <= Fraction(MAX_ERROR) / TASK_COUNT
    # a 99 % variant fails on either of its two tasks with at most 5 % in all
    assert 1 - (1 - fail_if_good) ** 2 <= Fraction(MAX_ERROR)
    assert rule.pass_if_bad == pytest.approx(float(pass_if_bad), rel=1e-9)
    assert rule.fail_if_good == pytest.approx(float(fail_if_good), rel=1e-9)


def test_no_fewer_images_would_do():
    rule = agreement_rule(0.99)
    n = rule.images - 1
    least = n  # lowered while a 97 % variant still passes rarely enough (the tail grows as k falls)
    while least > 0 and at_least_exactly(n, least - 1, Fraction(97, 100)) <= Fraction(MAX_ERROR):
        least -= 1
    assert 1 - at_least_exactly(n, least, Fraction(99, 100)) > Fraction(MAX_ERROR) / TASK_COUNT


def test_the_old_32_images_could_not_tell_97_from_100_percent():
    # all 32 agreeing was the bar (0.99 as a share): a 97 % variant clears it 38 % of the time
    assert at_least_exactly(32, 32, Fraction(97, 100)) > Fraction(3, 10)


@pytest.mark.parametrize("threshold, expected", [(1.0, "every image"), (0.0, "nothing"), (1.01, "impossible")])
def test_the_ends_of_the_threshold_range(threshold, expected):
    rule = agreement_rule(threshold)
    if expected == "every image":  # a perfect variant never fails; a 98 % one passes <= 5 %
        assert rule.least_agreeing == rule.images and rule.fail_if_good == 0
        assert at_least_exactly(rule.images, rule.images, Fraction(98, 100)) <= Fraction(MAX_ERROR)
    elif expected == "nothing":
        assert rule.passes(0)
    else:
        assert not rule.passes(rule.images)
