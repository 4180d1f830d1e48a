"""Batched inference from a version folder.

On a CPU with native bf16 (AVX-512-BF16 or AMX) the weights are cast to bf16; elsewhere the
CPU path stays fp32, since emulated bf16 is many times slower than fp32. Either way the model
runs channels_last, which lets oneDNN skip layout conversions between convolutions.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import torch
from PIL import Image

from .classes import TASKS
from .images import DEFAULT_MAX_PIXELS, open_image
from .transforms import CROP_SIZE, IMAGENET_STD, inference_tensor, normalize
from .version import load_version

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


class PredictorBase:
    """What every predictor of a version shares: its class lists, how an image becomes the
    network's input, and batching; subclasses answer `predict_tensors`."""

    def __init__(self, folder: str | Path, meta: dict, center_crop: bool | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.folder = Path(folder)
        self.meta = meta
        self.classes = {task: tuple(meta["classes"][task]) for task in TASKS}
        self.pixel_mean = tuple(meta["pixel_mean"])
        self.pixel_std = tuple(meta.get("pixel_std", IMAGENET_STD))
        self.crop_size = int(meta.get("crop_size", CROP_SIZE))
        self.train_size = int(meta.get("train_size", 256))
        self.center_crop = bool(meta.get("center_crop_eval", False)) if center_crop is None else center_crop
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels

    def predict_tensors(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (N, 3, H, W) -> per task float32 probabilities (N, C) on the CPU."""
        raise NotImplementedError

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """An RGB image as the uint8 (3, 224, 224) tensor the network reads."""
        return inference_tensor(image, self.crop_size, self.center_crop, self.train_size)

    def predict_images(self, images: Sequence[Image.Image], batch_size: int = 16) -> list[dict[str, list[float]]]:
        """One {task: [probability per class]} per image, in the order given."""
        results = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.prepare(image) for image in images[start:start + batch_size]])
            probs = self.predict_tensors(batch)
            results.extend({task: probs[task][i].tolist() for task in TASKS} for i in range(len(batch)))
        return results

    def predict_paths(self, paths: Iterable[str | Path], batch_size: int = 16) -> list[dict[str, list[float]]]:
        images = [open_image(path, max_pixels=self.max_pixels) for path in paths]
        return self.predict_images(images, batch_size)

    def describe(self, probabilities: dict[str, list[float]]) -> dict:
        """Probabilities -> {task: {"class": best, "probability": p, "probabilities": {name: p}}}."""
        out = {}
        for task in TASKS:
            values = probabilities[task]
            best = max(range(len(values)), key=values.__getitem__)
            out[task] = {"class": self.classes[task][best], "probability": values[best],
                         "probabilities": dict(zip(self.classes[task], values))}
        return out


class Predictor(PredictorBase):
    """Loads a version folder (refusing weights whose hash differs) and predicts both tasks."""

    path = "pytorch"

    def __init__(self, folder: str | Path, device: str | None = None, precision: str = "auto",
                 center_crop: bool | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        model, meta = load_version(folder)
        super().__init__(folder, meta, center_crop, max_pixels)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = self._choose_dtype(precision)
        self.model = model.eval().to(self.device, self.dtype).to(memory_format=torch.channels_last)
        log.info("predictor for %s on %s in %s", self.folder, self.device, str(self.dtype).replace("torch.", ""))

    def _choose_dtype(self, precision: str) -> torch.dtype:
        if precision == "fp32":
            return torch.float32
        if precision == "bf16":
            return torch.bfloat16
        if self.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32

    @torch.inference_mode()
    def predict_tensors(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (N, 3, H, W) -> per task float32 probabilities (N, C) on the CPU."""
        images = normalize(batch.to(self.device), self.pixel_mean, self.pixel_std)
        images = images.to(self.dtype).contiguous(memory_format=torch.channels_last)
        logits = self.model(images)
        return {task: torch.softmax(l.float(), dim=1).cpu() for task, l in zip(TASKS, logits)}
