"""Class balance for skewed consensus labels: per task, a weight per class that is
inversely proportional to the class's expected count in the training set.

Counts are expected counts: a soft target (0.75 awe, 0.25 fear) adds 0.75 to awe and 0.25 to
fear, so a consensus distribution keeps its meaning; rows masked out for a task and the rows'
own weights count as they do in the loss. The weights are used either in the loss (weighted
cross-entropy, `-sum_c w_c * t_c * log p_c`) or to draw the training batches.
"""
from __future__ import annotations

import torch

from .classes import TASKS
from .dataset import TrainingData

MAX_CLASS_WEIGHT = 10.0   # a class seen once among hundreds would otherwise swamp its batch


def expected_counts(data: TrainingData, task: str) -> torch.Tensor:
    """(C,) the sum of the targets over the rows labelled for `task`, each times its row weight."""
    row_weight = (data.masks[task] * data.weights).to(data.targets[task].dtype)
    return (data.targets[task] * row_weight[:, None]).sum(dim=0)


def class_weights(data: TrainingData) -> dict[str, torch.Tensor]:
    """Per task (C,): total / (classes present * count), so a balanced set gets all ones and the
    mean weight over the labelled rows stays 1; 0 for an absent class (no target mass to weigh)."""
    weights = {}
    for task in TASKS:
        counts = expected_counts(data, task)
        present = counts > 0
        if not bool(present.any()):
            weights[task] = torch.ones_like(counts)
            continue
        raw = counts.sum() / (present.sum() * counts.clamp_min(1e-12))
        weights[task] = torch.where(present, raw.clamp(max=MAX_CLASS_WEIGHT), torch.zeros_like(raw))
    return weights


def sample_weights(data: TrainingData, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N,) how often to draw each row: the mean, over the tasks it is labelled for, of its
    target's expected class weight (the row's own weight stays in the loss)."""
    total = torch.zeros(len(data))
    tasks = torch.zeros(len(data))
    for task in TASKS:
        mask = data.masks[task].cpu().float()
        total += mask * (data.targets[task].cpu().float() @ weights[task].cpu().float())
        tasks += mask
    return total / tasks.clamp_min(1.0)
