"""Batched inference from a version folder.

The PyTorch path computes in fp32 or bf16, chosen as model/precision.py says: on a CPU with
native bf16 "auto" times both on a small batch when the model loads (bf16 won for vgg16, 409 vs
938 ms/image; for mobilenet_v3_small one run found it slower, 23 vs 15, a later one faster).
Either way the model runs channels_last, which lets oneDNN skip layout conversions between
convolutions.
"""
from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Callable, Iterable, Sequence

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .classes import TASKS
from .files import write_atomically
from .images import DEFAULT_MAX_PIXELS, open_image
from .precision import PRECISIONS, TIMING_BATCH, choose_precision, measured_once, time_dtypes
from .transforms import CROP_SIZE, IMAGENET_STD, inference_tensor, normalize
from .version import load_version

log = logging.getLogger(__name__)

def bf16_weights(folder: Path, meta: dict, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The version's weights in bf16, memory-mapped from a file beside its safetensors (written
    once, atomically, named after the weights' sha256). Processes that map one file share its
    pages, where casting in memory gives every gunicorn worker a private copy (as the fp32
    safetensors, mapped by load_file, are shared). None when the folder cannot be written: the
    caller then casts in memory."""
    path = folder / f".weights-bf16-{meta['weights_sha256'][:16]}.safetensors"
    state = model.state_dict()
    if path.is_file():
        mapped = _mapped_if_equal(path, state)
        if mapped is not None:
            return mapped
        log.warning("%s does not hold this version's weights in bf16: written again", path)
    cast = {name: _as_bf16(t) for name, t in state.items()}
    try:
        write_atomically(path, lambda temp: save_file(cast, temp))
    except OSError as exc:
        log.info("bf16 weights of %s not written (%s): cast in this process's memory", folder, exc)
        return None
    return load_file(path)


def _as_bf16(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor).contiguous()


def _mapped_if_equal(path: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The file's tensors when they are exactly `state` cast to bf16 (a file in a version folder
    is not trusted: a truncated or altered one is never served); None otherwise. Casts one tensor
    at a time, so checking costs no second copy of the weights."""
    try:
        mapped = load_file(path)
    except (OSError, SafetensorError):
        return None

    def equal(name: str, tensor: torch.Tensor) -> bool:
        expected = _as_bf16(tensor)
        found = mapped[name]
        return found.dtype == expected.dtype and found.shape == expected.shape and torch.equal(found, expected)
    same = mapped.keys() == state.keys() and all(equal(k, v) for k, v in state.items())
    return mapped if same else None


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
                 center_crop: bool | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 measure: Callable[[], dict[str, float]] | None = None):
        """`measure` stands in for timing both dtypes (tests); it too runs once per key."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        model, meta = load_version(folder)
        super().__init__(folder, meta, center_crop, max_pixels)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = model.eval().to(memory_format=torch.channels_last)
        key = (meta["architecture"].get("backbone"), self.crop_size, TIMING_BATCH, torch.get_num_threads())
        # one timing per version for all of a server's workers, kept beside the version
        timings_file = self.folder / (f".precision-{self.crop_size}px-{TIMING_BATCH}x-"
                                      f"{torch.get_num_threads()}threads.json")
        self.precision = choose_precision(precision, self.device, measured_once(
            key, measure or (lambda: time_dtypes(model, self.crop_size)), timings_file))
        self.dtype = self.precision.dtype
        if self.dtype == torch.bfloat16 and self.device.type == "cpu":
            shared = bf16_weights(self.folder, meta, model)
            if shared is not None:
                model.load_state_dict(shared, strict=True, assign=True)
        # channels_last copies the convolutions' weights; the linear layers' stay mapped
        self.model = model.to(self.device, self.dtype).to(memory_format=torch.channels_last)
        log.info("predictor for %s on %s in %s", self.folder, self.device, self.precision.describe())

    @torch.inference_mode()
    def predict_tensors(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (N, 3, H, W) -> per task float32 probabilities (N, C) on the CPU."""
        images = normalize(batch.to(self.device), self.pixel_mean, self.pixel_std)
        images = images.to(self.dtype).contiguous(memory_format=torch.channels_last)
        logits = self.model(images)
        return {task: torch.softmax(out.float(), dim=1).cpu() for task, out in zip(TASKS, logits)}
