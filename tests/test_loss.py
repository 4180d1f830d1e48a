"""L = La + lambda * Le (docs/developers/method.md, "Training"), checked against numbers worked
out by hand with math.exp / math.log rather than with torch."""
from __future__ import annotations

import math

import pytest
import torch

from model.loss import DEFAULT_LAMBDA, soft_cross_entropy, two_task_loss

TOL = 1e-5

LOGITS_A = [[2.0, -1.0], [0.5, 0.25], [-3.0, 1.5]]
LOGITS_E = [[1.0, 0.0, -1.0, 2.0, 0.5, -0.5, 0.0, 3.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [-2.0, 4.0, 1.0, 0.0, -1.0, 2.5, 0.3, -0.7]]


def log_softmax(row: list[float]) -> list[float]:
    log_z = math.log(sum(math.exp(v) for v in row))
    return [v - log_z for v in row]


def ce(row: list[float], target: list[float]) -> float:
    return -sum(t * lp for t, lp in zip(target, log_softmax(row)))


def one_hot(index: int, width: int) -> list[float]:
    return [1.0 if i == index else 0.0 for i in range(width)]


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_default_lambda_is_a_quarter():
    assert DEFAULT_LAMBDA == 0.25


def test_hard_targets_full_masks():
    ya = [0, 1, 1]
    ye = [3, 0, 1]
    ta = [one_hot(i, 2) for i in ya]
    te = [one_hot(i, 8) for i in ye]
    la = sum(ce(r, y) for r, y in zip(LOGITS_A, ta)) / 3
    le = sum(ce(r, y) for r, y in zip(LOGITS_E, te)) / 3
    # spot-check the hand formula on one sample: -log(e^2 / (e^2 + e^-1))
    assert ce(LOGITS_A[0], ta[0]) == pytest.approx(math.log(1 + math.exp(-3.0)))
    assert ce(LOGITS_E[1], te[1]) == pytest.approx(math.log(8.0))

    parts = two_task_loss(t(LOGITS_A), t(LOGITS_E), t(ta), t(te), torch.ones(3), torch.ones(3))
    assert float(parts.aesthetic) == pytest.approx(la, abs=TOL)
    assert float(parts.emotion) == pytest.approx(le, abs=TOL)
    assert float(parts.total) == pytest.approx(la + 0.25 * le, abs=TOL)


@pytest.mark.parametrize("lam", [1.0, 0.0, 2.5])
def test_other_lambda(lam):
    ta = [one_hot(0, 2), one_hot(1, 2), one_hot(0, 2)]
    te = [one_hot(7, 8), one_hot(2, 8), one_hot(5, 8)]
    la = sum(ce(r, y) for r, y in zip(LOGITS_A, ta)) / 3
    le = sum(ce(r, y) for r, y in zip(LOGITS_E, te)) / 3
    parts = two_task_loss(t(LOGITS_A), t(LOGITS_E), t(ta), t(te), torch.ones(3), torch.ones(3), lam=lam)
    assert float(parts.total) == pytest.approx(la + lam * le, abs=TOL)
    assert float(parts.emotion) == pytest.approx(le, abs=TOL)


def test_soft_targets():
    ta = [[0.7, 0.3], [0.5, 0.5], [0.1, 0.9]]
    te = [[0.0, 0.75, 0.0, 0.0, 0.0, 0.0, 0.25, 0.0],
          [1 / 8] * 8,
          [0.2, 0.2, 0.2, 0.2, 0.2, 0.0, 0.0, 0.0]]
    la = sum(ce(r, y) for r, y in zip(LOGITS_A, ta)) / 3
    le = sum(ce(r, y) for r, y in zip(LOGITS_E, te)) / 3
    # uniform target on equal logits: log(8)
    assert ce(LOGITS_E[1], te[1]) == pytest.approx(math.log(8))
    parts = two_task_loss(t(LOGITS_A), t(LOGITS_E), t(ta), t(te), torch.ones(3), torch.ones(3))
    assert float(parts.aesthetic) == pytest.approx(la, abs=TOL)
    assert float(parts.emotion) == pytest.approx(le, abs=TOL)
    assert float(parts.total) == pytest.approx(la + 0.25 * le, abs=TOL)


def test_mask_removes_a_sample_from_one_task_only():
    ta = [one_hot(0, 2), one_hot(1, 2), one_hot(1, 2)]
    te = [one_hot(3, 8), [0.0] * 8, one_hot(1, 8)]     # sample 1 has no emotion label
    mask_a = torch.tensor([1.0, 1.0, 0.0])               # sample 2 has no aesthetic label
    mask_e = torch.tensor([1.0, 0.0, 1.0])
    la = (ce(LOGITS_A[0], ta[0]) + ce(LOGITS_A[1], ta[1])) / 2
    le = (ce(LOGITS_E[0], te[0]) + ce(LOGITS_E[2], te[2])) / 2
    parts = two_task_loss(t(LOGITS_A), t(LOGITS_E), t(ta), t(te), mask_a, mask_e)
    assert float(parts.aesthetic) == pytest.approx(la, abs=TOL)
    assert float(parts.emotion) == pytest.approx(le, abs=TOL)
    assert float(parts.total) == pytest.approx(la + 0.25 * le, abs=TOL)
    # a masked-out sample's logits do not matter at all
    changed = t(LOGITS_A)
    changed[2] = torch.tensor([50.0, -50.0])
    again = two_task_loss(changed, t(LOGITS_E), t(ta), t(te), mask_a, mask_e)
    assert float(again.aesthetic) == pytest.approx(la, abs=TOL)


def test_per_sample_weights():
    ta = [one_hot(0, 2), one_hot(1, 2), one_hot(1, 2)]
    te = [one_hot(3, 8), one_hot(0, 8), one_hot(1, 8)]
    w = [0.5, 3.0, 1.0]
    mask_e = [1.0, 0.0, 1.0]
    la = sum(wi * ce(r, y) for wi, r, y in zip(w, LOGITS_A, ta)) / sum(w)
    le = (w[0] * ce(LOGITS_E[0], te[0]) + w[2] * ce(LOGITS_E[2], te[2])) / (w[0] + w[2])
    parts = two_task_loss(t(LOGITS_A), t(LOGITS_E), t(ta), t(te), torch.ones(3), t(mask_e),
                          lam=0.5, weights=t(w))
    assert float(parts.aesthetic) == pytest.approx(la, abs=TOL)
    assert float(parts.emotion) == pytest.approx(le, abs=TOL)
    assert float(parts.total) == pytest.approx(la + 0.5 * le, abs=TOL)
    # weights differ from the unweighted mean, so they are really applied
    unweighted = sum(ce(r, y) for r, y in zip(LOGITS_A, ta)) / 3
    assert abs(la - unweighted) > 0.1


def test_task_with_no_labels_contributes_zero_and_no_nan():
    ta = [one_hot(0, 2), one_hot(1, 2), one_hot(1, 2)]
    te = [[0.0] * 8] * 3
    logits_a = t(LOGITS_A).requires_grad_()
    logits_e = t(LOGITS_E).requires_grad_()
    parts = two_task_loss(logits_a, logits_e, t(ta), t(te), torch.ones(3), torch.zeros(3))
    la = sum(ce(r, y) for r, y in zip(LOGITS_A, ta)) / 3
    assert float(parts.emotion.detach()) == 0.0
    assert float(parts.total.detach()) == pytest.approx(la, abs=TOL)
    parts.total.backward()
    assert torch.isfinite(logits_a.grad).all() and torch.isfinite(logits_e.grad).all()
    assert torch.count_nonzero(logits_e.grad) == 0
    assert torch.count_nonzero(logits_a.grad) > 0


def test_both_tasks_unlabelled_is_zero():
    parts = two_task_loss(t(LOGITS_A), t(LOGITS_E), torch.zeros(3, 2), torch.zeros(3, 8),
                          torch.zeros(3), torch.zeros(3))
    assert float(parts.total) == 0.0
    assert not torch.isnan(parts.total)


@pytest.mark.parametrize("logit_high,logit_low,ya", [(1.3, -0.4, 1.0), (1.3, -0.4, 0.0),
                                                       (-2.0, 0.5, 1.0), (0.2, 0.1, 0.3)])
def test_binary_case_is_the_patents_formula(logit_high, logit_low, ya):
    pa = math.exp(logit_high) / (math.exp(logit_high) + math.exp(logit_low))   # P(high)
    expected = -ya * math.log(pa) - (1 - ya) * math.log(1 - pa)
    got = soft_cross_entropy(t([[logit_high, logit_low]]), t([[ya, 1 - ya]]), torch.ones(1))
    assert float(got) == pytest.approx(expected, abs=TOL)


def test_extreme_logits_stay_finite():
    # log-softmax, not log(softmax): a wrong class at -100 costs ~100, not inf
    got = soft_cross_entropy(t([[100.0, 0.0]]), t([[0.0, 1.0]]), torch.ones(1))
    assert float(got) == pytest.approx(100.0, abs=1e-3)
