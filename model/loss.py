"""L = La + lambda * Le (docs/developers/method.md, "Training"), with soft targets and per-task masks.

With a one-hot target and two aesthetic classes, La reduces to the patent's
-ya*log(pa) - (1-ya)*log(1-pa), and Le to -sum(ye*log(pe)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .limits import TRAINING_DEFAULTS

DEFAULT_LAMBDA = TRAINING_DEFAULTS["lam"]


@dataclass
class LossParts:
    total: torch.Tensor
    aesthetic: torch.Tensor
    emotion: torch.Tensor


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                       weights: torch.Tensor | None = None, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the masked-in samples of -sum(target * log softmax(logits)).

    `targets` hold a probability per class (one-hot for a hard label); samples with mask 0
    (not labelled for this task) add nothing. With no sample masked in the result is 0 and
    carries no gradient to the head, so an all-emotion batch still trains emotion alone.
    `class_weights` (C,) make it the weighted mean of -sum(w_c * target_c * log p_c), each
    sample counting with its target's expected class weight (as torch's weighted CE does).
    """
    weighted_targets = targets if class_weights is None else targets * class_weights.to(targets.dtype)
    per_sample = -(weighted_targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    w = mask.float() if weights is None else mask.float() * weights.float()
    if class_weights is not None:
        w_norm = w * weighted_targets.sum(dim=1).float()
        return (per_sample * w).sum() / w_norm.sum().clamp_min(1e-12)
    return (per_sample * w).sum() / w.sum().clamp_min(1e-12)


def two_task_loss(logits_a, logits_e, target_a, target_e, mask_a, mask_e,
                  lam: float = DEFAULT_LAMBDA, weights: torch.Tensor | None = None,
                  class_weights: dict[str, torch.Tensor] | None = None) -> LossParts:
    class_weights = class_weights or {}
    la = soft_cross_entropy(logits_a, target_a, mask_a, weights, class_weights.get("aesthetic"))
    le = soft_cross_entropy(logits_e, target_e, mask_e, weights, class_weights.get("emotion"))
    return LossParts(total=la + lam * le, aesthetic=la, emotion=le)
