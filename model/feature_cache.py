"""The frozen part of the network computed once per image and augmented view.

Augmentation stays the patent's (256 resize, random 224 crop, flip), but the crop and flip are
drawn ahead: K views per training image, each the frozen prefix's output of one random crop and
flip. Each epoch then picks one of its K views per image at random, so an epoch costs only the
trainable steps. With K views and E epochs every view is reused about E / K times; the views a
frozen network sees are the same crops the uncached loop would draw, only fewer distinct ones
(4 views x 2 flips cover much of the 33 x 33 x 2 crops' variety at this scale of feature map).

Held-out images have one deterministic view (as at inference), cached too. The cache is held in
memory; a set whose cache would exceed `max_bytes` trains without it (the same result, slower).
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .finetune import FreezePlan, Step, run_steps
from .transforms import IMAGENET_STD, normalize, random_crop_flip

log = logging.getLogger(__name__)


@dataclass
class FeatureCache:
    train_views: tuple[torch.Tensor, torch.Tensor]   # branch A's and E's features, each (K, N, ...)
    eval_features: tuple[torch.Tensor, torch.Tensor]  # (N_eval, ...)
    suffix: list[Step]                                # the steps that run on cached features

    @property
    def views(self) -> int:
        return self.train_views[0].shape[0]

    def train_logits(self, index: torch.Tensor, generator: torch.Generator):
        view = torch.randint(0, self.views, (len(index),), generator=generator)
        a, e = (features[view, index] for features in self.train_views)
        return run_steps(self.suffix, a, e)

    def eval_logits(self, index: torch.Tensor):
        a, e = (features[index] for features in self.eval_features)
        return run_steps(self.suffix, a, e)


def split_at_cut(plan: FreezePlan) -> tuple[list[Step], list[Step]]:
    """(prefix, suffix) steps. When only the heads train, their average pool (no parameters) joins
    the prefix: the cache then holds a vector per image instead of a feature map."""
    prefix, suffix = plan.steps[:plan.cut], plan.steps[plan.cut:]
    head = suffix[0]
    if head.kind == "head" and all(isinstance(h[0], nn.AdaptiveAvgPool2d) for h in head.modules):
        ha, he = head.modules
        prefix = prefix + [Step("head", 0, (ha[0], he[0]), lambda a, e: (ha[0](a), he[0](e)))]
        suffix = [Step("head", 0, head.modules, lambda a, e: (ha[1:](a), he[1:](e)))]
    return prefix, suffix


@dataclass
class CacheRequest:
    """What building a cache needs to know besides the data."""
    views: int
    max_bytes: int
    crop: int
    mean: tuple[float, float, float]
    device: torch.device
    bf16: bool = False
    batch_size: int = 32


def build_feature_cache(plan: FreezePlan, train_images: torch.Tensor, eval_images: torch.Tensor,
                        request: CacheRequest, generator: torch.Generator) -> FeatureCache | None:
    """The cache for uint8 training images (K random views each) and held-out images already in
    their inference view; None when nothing is frozen or it would not fit in `max_bytes`."""
    if plan.cut == 0:
        return None
    prefix, suffix = split_at_cut(plan)
    per_image = _bytes_per_image(prefix, train_images[:1, :, :request.crop, :request.crop], request)
    total = per_image * (request.views * len(train_images) + len(eval_images))
    if total > request.max_bytes:
        log.info("no feature cache: %.0f MiB needed, %.0f MiB allowed", total / 2**20, request.max_bytes / 2**20)
        return None
    views = [_prefix_outputs(prefix, random_crop_flip(train_images, request.crop, generator), request)
             for _ in range(request.views)]
    train_views = tuple(torch.stack([v[branch] for v in views]) for branch in (0, 1))
    log.info("feature cache: %d views of %d images + %d held-out, %.1f MiB, after %s",
             request.views, len(train_images), len(eval_images), total / 2**20,
             plan.steps[plan.cut - 1].name)
    return FeatureCache(train_views, _prefix_outputs(prefix, eval_images, request), suffix)


def _autocast(request: CacheRequest):
    return torch.autocast(request.device.type, dtype=torch.bfloat16) if request.bf16 else nullcontext()


@torch.no_grad()
def _prefix_outputs(prefix: list[Step], images: torch.Tensor, request: CacheRequest):
    """Both branches' prefix outputs for uint8 images in their final view, in batches."""
    outputs_a, outputs_e = [], []
    for start in range(0, len(images), request.batch_size):
        batch = normalize(images[start:start + request.batch_size].to(request.device), request.mean, IMAGENET_STD)
        with _autocast(request):
            a, e = run_steps(prefix, batch, batch)
        outputs_a.append(a)
        outputs_e.append(e)
    return torch.cat(outputs_a), torch.cat(outputs_e)


def _bytes_per_image(prefix: list[Step], probe: torch.Tensor, request: CacheRequest) -> int:
    a, e = _prefix_outputs(prefix, probe, request)
    return (a[0].numel() * a.element_size()) + (e[0].numel() * e.element_size())
