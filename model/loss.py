"""L = La + lambda * Le (method.md, "Training"), with soft targets and per-task masks.

With a one-hot target and two aesthetic classes, La reduces to the patent's
-ya*log(pa) - (1-ya)*log(1-pa), and Le to -sum(ye*log(pe)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_LAMBDA = 0.25


@dataclass
class LossParts:
    total: torch.Tensor
    aesthetic: torch.Tensor
    emotion: torch.Tensor


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the masked-in samples of -sum(target * log softmax(logits)).

    `targets` hold a probability per class (one-hot for a hard label); samples with mask 0
    (not labelled for this task) add nothing. With no sample masked in the result is 0 and
    carries no gradient to the head, so an all-emotion batch still trains emotion alone.
    """
    per_sample = -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    w = mask.float() if weights is None else mask.float() * weights.float()
    return (per_sample * w).sum() / w.sum().clamp_min(1e-12)


def two_task_loss(logits_a, logits_e, target_a, target_e, mask_a, mask_e,
                  lam: float = DEFAULT_LAMBDA, weights: torch.Tensor | None = None) -> LossParts:
    la = soft_cross_entropy(logits_a, target_a, mask_a, weights)
    le = soft_cross_entropy(logits_e, target_e, mask_e, weights)
    return LossParts(total=la + lam * le, aesthetic=la, emotion=le)
