"""Batched inference from a version folder.

On a CPU with native bf16 (AVX-512-BF16 or AMX) "auto" times both dtypes on a small batch when
the model loads and keeps the faster: bf16 wins for vgg16 (409 vs 938 ms/image), while for
mobilenet_v3_small one run here found it slower (23 vs 15) and a later one faster (18 vs 133):
which wins depends on the network, the CPU and oneDNN's kernels, so it is measured, not assumed.
Without native bf16 the CPU path stays fp32 untried, since emulated bf16 is many times slower.
On CUDA bf16 serves where supported. Either way the model runs channels_last, which lets oneDNN
skip layout conversions between convolutions.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .classes import TASKS
from .files import write_atomically
from .images import DEFAULT_MAX_PIXELS, open_image
from .transforms import CROP_SIZE, IMAGENET_STD, inference_tensor, normalize
from .version import load_version

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
# the precision check's timed batch and passes per dtype: small, since it runs when a model loads
# (vgg16 in fp32 takes ~2 s per pass of 2 images on two cores)
TIMING_BATCH = 2
TIMING_ROUNDS = 3
# bf16 serves only when at least this much faster: it rounds the outputs (probabilities within
# 0.05 of fp32's), and a near tie is what load from other processes flips either way (two
# workers of one server, mobilenet_v3_small: bf16 103 vs fp32 94 in one, 69 vs 144 in the other)
BF16_MIN_GAIN = 0.10
# (backbone, input size, batch, threads) -> {"fp32": ms, "bf16": ms}: timed once per process
_MEASURED: dict[tuple, dict[str, float]] = {}


def cpu_has_native_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@dataclass(frozen=True)
class PrecisionChoice:
    """The dtype a Predictor computes in, why, and the timings behind an "auto" choice."""

    dtype: torch.dtype
    reason: str
    ms_per_image: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


def choose_precision(precision: str, device: torch.device, measure: Callable[[], dict[str, float]],
                     native_bf16: bool | None = None) -> PrecisionChoice:
    """What a Predictor computes in: a forced precision as given; on CUDA bf16 where supported;
    on a CPU with native bf16 bf16 when `measure()` ({dtype name: ms per image}) finds it
    BF16_MIN_GAIN faster, else fp32; on any other CPU fp32, never timing bf16 (emulated, many
    times slower)."""
    if precision in ("fp32", "bf16"):
        return PrecisionChoice(torch.float32 if precision == "fp32" else torch.bfloat16, "forced")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice(torch.bfloat16, "CUDA with bf16")
        return PrecisionChoice(torch.float32, "CUDA without bf16")
    if not (cpu_has_native_bf16() if native_bf16 is None else native_bf16):
        return PrecisionChoice(torch.float32, "the CPU has no native bf16")
    timings = measure()
    faster = "bf16" if timings["bf16"] < (1 - BF16_MIN_GAIN) * timings["fp32"] else "fp32"
    return PrecisionChoice(torch.bfloat16 if faster == "bf16" else torch.float32,
                           f"measured bf16 {timings['bf16']:.1f} vs fp32 {timings['fp32']:.1f} ms/image", timings)


def time_dtypes(model: torch.nn.Module, crop_size: int, batch: int = TIMING_BATCH, rounds: int = TIMING_ROUNDS,
                timer: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """ms per image of an fp32 CPU model's forward in fp32 and in bf16 (a cast copy) on a batch of
    zeros: one warm-up pass each (oneDNN builds its kernels on the first), then `rounds` passes
    in turns, the fastest of each, so that load from other processes falls on both alike."""
    images = torch.zeros(batch, 3, crop_size, crop_size).contiguous(memory_format=torch.channels_last)
    candidates = {"fp32": (model, images), "bf16": (copy.deepcopy(model).to(torch.bfloat16), images.bfloat16())}
    fastest = {name: float("inf") for name in candidates}
    with torch.inference_mode():
        for candidate, inputs in candidates.values():
            candidate(inputs)
        for _ in range(rounds):
            for name, (candidate, inputs) in candidates.items():
                started = timer()
                candidate(inputs)
                fastest[name] = min(fastest[name], timer() - started)
    return {name: round(seconds * 1000 / batch, 2) for name, seconds in fastest.items()}


def measured_once(key: tuple, measure: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
    """`measure`, run at most once per key in this process (every later load reuses its result)."""
    def cached() -> dict[str, float]:
        if key not in _MEASURED:
            _MEASURED[key] = measure()
        return _MEASURED[key]
    return cached


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
        self.precision = choose_precision(precision, self.device, measured_once(
            key, measure or (lambda: time_dtypes(model, self.crop_size))))
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
        return {task: torch.softmax(l.float(), dim=1).cpu() for task, l in zip(TASKS, logits)}
