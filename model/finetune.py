"""Which layers train: full fine-tuning (the patent), a frozen backbone, or a rule that unfreezes
the deepest convolution groups as the training set grows.

The network's forward pass is a chain of steps: group 0, cross-branch layer 0, group 1, ...,
cross-branch layer n-2, group n-1, the heads. Everything before the first step that trains is
fixed, so its output (the input of the first trainable step) can be computed once per image and
augmented view (model/feature_cache.py).

The "auto" rule, for a start whose filters mean something (pretrained or a trained version):

- with N training images and the threshold T (`full_finetune_labels`), the deepest
  u = n - ceil(log2(T / N)) groups train (clamped to 0..n): one more group per doubling of the
  set, every layer from N >= T on;
- a cross-branch layer trains with the group it feeds: a trainable cross-branch layer under a
  frozen group would still cost a backward pass through that group on every step (no cache can
  skip it), which is most of the cost of training the group itself;
- so the smallest sets (u = 0) train the heads only, on cached features: epochs take seconds.

"frozen" is the issue's literal reading: every convolution group frozen, every cross-branch layer
and the heads train (the cache then holds group 0's output, which saves about a third of the work).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable

import torch
from torch import nn

from .limits import FINETUNE_MODES, TRAINING_DEFAULTS

DEFAULT_FULL_FINETUNE_LABELS = TRAINING_DEFAULTS["full_finetune_labels"]


@dataclass(frozen=True)
class Step:
    kind: str                  # "group", "cross" or "head"
    index: int                 # the group's or cross-branch layer's number; 0 for the heads
    modules: tuple[nn.Module, ...]
    run: Callable              # (a, e) -> (a, e)

    @property
    def name(self) -> str:
        return "heads" if self.kind == "head" else f"{self.kind}{self.index}"


def forward_steps(model) -> list[Step]:
    """The steps of `CrossBranchNet.forward`, in order (a test checks that they compose to it)."""
    steps = []
    groups = list(zip(model.branch_a.groups, model.branch_e.groups))
    for i, (group_a, group_e) in enumerate(groups):
        steps.append(Step("group", i, (group_a, group_e), lambda a, e, ga=group_a, ge=group_e: (ga(a), ge(e))))
        if i < len(model.cross):
            steps.append(Step("cross", i, (model.cross[i],), model.cross[i]))
    heads = (model.branch_a.head, model.branch_e.head)
    steps.append(Step("head", 0, heads, lambda a, e: (heads[0](a), heads[1](e))))
    return steps


def unfrozen_groups(labels: int, groups: int, full_from: int) -> int:
    """The "auto" rule: how many of the deepest convolution groups train for `labels` images."""
    if labels >= full_from:
        return groups
    return max(0, min(groups, groups - math.ceil(math.log2(full_from / max(labels, 1)))))


def trainable_steps(mode: str, steps: list[Step], labels: int, full_from: int) -> set[str]:
    """The names of the steps whose parameters train."""
    if mode not in FINETUNE_MODES:
        raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {mode!r}")
    if mode == "full":
        return {s.name for s in steps}
    if mode == "frozen":
        return {s.name for s in steps if s.kind != "group"}
    groups = sum(1 for s in steps if s.kind == "group")
    first = groups - unfrozen_groups(labels, groups, full_from)   # the first group that trains
    if first == 0:
        return {s.name for s in steps}
    return {s.name for s in steps
            if s.kind == "head" or (s.kind == "group" and s.index >= first)
            or (s.kind == "cross" and s.index >= first - 1)}


@dataclass
class FreezePlan:
    steps: list[Step]
    trainable: set[str]

    @property
    def cut(self) -> int:
        """The index of the first trainable step: the steps before it make the cacheable features."""
        return next(i for i, s in enumerate(self.steps) if s.name in self.trainable)

    @property
    def frozen_modules(self) -> list[nn.Module]:
        return [m for s in self.steps if s.name not in self.trainable for m in s.modules]

    def describe(self) -> str:
        return ", ".join(s.name for s in self.steps if s.name in self.trainable)

    def hold_frozen_in_eval(self) -> None:
        """Frozen layers keep their BatchNorm statistics and drop no units: call after model.train()."""
        for module in self.frozen_modules:
            module.eval()


def freeze(model, mode: str, labels: int, full_from: int = DEFAULT_FULL_FINETUNE_LABELS) -> FreezePlan:
    """Switches off the gradients of the frozen steps' parameters and returns the plan."""
    steps = forward_steps(model)
    plan = FreezePlan(steps, trainable_steps(mode, steps, labels, full_from))
    for step in steps:
        for param in (p for m in step.modules for p in m.parameters()):
            param.requires_grad_(step.name in plan.trainable)
    return plan


def run_steps(steps: list[Step], a: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for step in steps:
        a, e = step.run(a, e)
    return a, e
