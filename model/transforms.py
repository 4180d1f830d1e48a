"""Image transforms of docs/developers/method.md ("Training" and "Inference"): training resizes
to 256x256, subtracts the training set's mean pixel, crops 224x224 at random and flips with
p = 0.5; inference resizes to 224x224.

Images travel as uint8 CHW tensors until the last step, which makes floats, subtracts the
mean and divides by a fixed scale (ImageNet's per-channel std, so that pretrained filters see
inputs of the size they were trained on; the std is stored with the version too).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .limits import TRAINING_DEFAULTS

TRAIN_SIZE = TRAINING_DEFAULTS["train_size"]
CROP_SIZE = TRAINING_DEFAULTS["crop_size"]
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_uint8_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, size, size), resized with antialiasing."""
    resized = image.convert("RGB").resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def pixel_mean(images: Sequence[torch.Tensor]) -> tuple[float, float, float]:
    """Per-channel mean over a training set of uint8 CHW tensors, on the [0, 1] scale."""
    total = torch.zeros(3, dtype=torch.float64)
    count = 0
    for image in images:
        total += image.double().sum(dim=(1, 2))
        count += image.shape[1] * image.shape[2]
    if count == 0:
        raise ValueError("pixel mean of an empty training set")
    return tuple((total / count / 255.0).tolist())


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, mean-subtracted and scaled."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - mean_t) / std_t


def random_crop_flip(batch: torch.Tensor, crop: int = CROP_SIZE,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image: a crop x crop patch at a uniformly random position, flipped with p = 0.5."""
    n, _, h, w = batch.shape
    tops = torch.randint(0, h - crop + 1, (n,), generator=generator)
    lefts = torch.randint(0, w - crop + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty((n, batch.shape[1], crop, crop), dtype=batch.dtype, device=batch.device)
    for i in range(n):
        patch = batch[i, :, tops[i]:tops[i] + crop, lefts[i]:lefts[i] + crop]
        out[i] = patch.flip(-1) if flips[i] else patch
    return out


def inference_tensor(image: Image.Image, size: int = CROP_SIZE, center_crop: bool = False,
                     train_size: int = TRAIN_SIZE) -> torch.Tensor:
    """The patent resizes straight to 224x224; `center_crop` instead resizes to the training
    size and cuts the central patch, which matches the scale the network saw in training."""
    if not center_crop:
        return to_uint8_tensor(image, size)
    big = to_uint8_tensor(image, train_size)
    offset = (train_size - size) // 2
    return big[:, offset:offset + size, offset:offset + size].contiguous()
