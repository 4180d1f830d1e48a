"""fp32 or bf16, chosen by measurement: shared by the Predictor (inference in a bf16 copy) and
train() (bf16 autocast over fp32 weights).

Which dtype is faster depends on the network, the CPU and oneDNN's kernels, so on a CPU with
native bf16 (AVX-512-BF16 or AMX) "auto" times both on a small batch and keeps bf16 only when it
wins clearly. Measured here (2-core EPYC with AVX-512-BF16, `benchmarks/train_step.py`, batch 8
at 224, channels_last): a training step in bf16 autocast is 1.84x faster than fp32 for resnet18
and 1.95x for vgg16, but 0.78x for mobilenet_v3_small. Without native bf16 the CPU stays fp32
untried (emulated bf16 is many times slower); CUDA uses bf16 where supported.
"""
from __future__ import annotations

import copy
import fcntl
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import torch

from .files import write_text_atomically
from .limits import PRECISIONS

log = logging.getLogger(__name__)

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
# the timed batch and passes per dtype: small, since the check runs when a model loads or a
# training run starts (vgg16 in fp32 takes ~2 s per forward pass of 2 images on two cores)
TIMING_BATCH = 2
TIMING_ROUNDS = 3
# bf16 is chosen only when at least this much faster: it rounds the outputs (probabilities within
# 0.05 of fp32's), and a near tie is what load from other processes flips either way (two
# workers of one server, mobilenet_v3_small: bf16 103 vs fp32 94 in one, 69 vs 144 in the other)
BF16_MIN_GAIN = 0.10
# (what was timed, backbone, input size, batch, threads, ...) -> {"fp32": ms, "bf16": ms}:
# timed once per process
_MEASURED: dict[tuple, dict[str, float]] = {}


def cpu_has_native_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@dataclass(frozen=True)
class PrecisionChoice:
    """The dtype a model computes in, why, and the timings behind an "auto" choice."""

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
    """A forced precision as given; on CUDA bf16 where supported; on a CPU with native bf16 bf16
    when `measure()` ({dtype name: ms per image}) finds it BF16_MIN_GAIN faster, else fp32; on
    any other CPU fp32, never timing bf16 (emulated, many times slower)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
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


def measured_once(key: tuple, measure: Callable[[], dict[str, float]],
                  shared: Path | None = None) -> Callable[[], dict[str, float]]:
    """`measure`, run at most once per key in this process (every later use reuses its result).
    With `shared` (a file beside one version) the file decides, read once per file: another process
    that timed first wins, and a process that has timed this key already writes that instead of
    timing again; so every process agrees on each version, whichever version each loaded first."""
    def cached() -> dict[str, float]:
        if shared is None:
            if key not in _MEASURED:
                _MEASURED[key] = measure()
            return _MEASURED[key]
        if (key, shared) not in _MEASURED:
            known = _MEASURED.get(key)
            _MEASURED[(key, shared)] = _MEASURED[key] = _measured_by_one_process(
                shared, measure if known is None else lambda: known)
        return _MEASURED[(key, shared)]
    return cached


def _measured_by_one_process(path: Path, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The timings in `path`, measured and written by whichever process got there first: the
    gunicorn workers of one server then serve in one precision (timed apart, a near tie gave two
    mobilenet_v3_small workers different ones), and time one after the other, not against each
    other. An implausible file is measured again; a folder that cannot be locked or written
    leaves this process to measure alone."""
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return measure()
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)   # released when the descriptor closes
        found = _plausible_timings(path)
        if found is not None:
            return found
        timings = measure()
        try:
            write_text_atomically(path, json.dumps(timings))
        except OSError as exc:
            log.info("precision timings not written to %s (%s): measured in this process only", path, exc)
        return timings
    finally:
        os.close(folder)


def _plausible_timings(path: Path) -> dict[str, float] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    plausible = isinstance(data, dict) and set(data) == {"fp32", "bf16"} and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in data.values())
    if not plausible:
        log.warning("%s does not hold two positive timings: measured again", path)
    return data if plausible else None


def _fastest_in_turns(candidates: dict[str, Callable[[], None]], batch: int, rounds: int,
                      timer: Callable[[], float]) -> dict[str, float]:
    """ms per image of each candidate: one warm-up call each (oneDNN builds its kernels on the
    first), then `rounds` calls in turns, the fastest of each, so that load from other processes
    falls on all alike."""
    for run in candidates.values():
        run()
    fastest = {name: float("inf") for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            started = timer()
            run()
            fastest[name] = min(fastest[name], timer() - started)
    return {name: round(seconds * 1000 / batch, 2) for name, seconds in fastest.items()}


def time_dtypes(model: torch.nn.Module, crop_size: int, batch: int = TIMING_BATCH, rounds: int = TIMING_ROUNDS,
                timer: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """ms per image of an fp32 CPU model's inference forward in fp32 and in bf16 (a cast copy),
    on a batch of zeros."""
    images = torch.zeros(batch, 3, crop_size, crop_size).contiguous(memory_format=torch.channels_last)
    cast, cast_images = copy.deepcopy(model).to(torch.bfloat16), images.bfloat16()

    def forward(candidate, inputs):
        def run():
            with torch.inference_mode():
                candidate(inputs)
        return run
    return _fastest_in_turns({"fp32": forward(model, images), "bf16": forward(cast, cast_images)},
                             batch, rounds, timer)


def time_training_dtypes(model: torch.nn.Module, crop_size: int, device: torch.device,
                         memory_format: torch.memory_format = torch.channels_last, batch: int = TIMING_BATCH,
                         rounds: int = TIMING_ROUNDS, timer: Callable[[], float] = time.perf_counter
                         ) -> dict[str, float]:
    """ms per image of a training step's forward and backward, in fp32 and in bf16 autocast, on
    a batch of zeros. The model is left as it was: its gradients cleared and its buffers
    (BatchNorm's running statistics, which a training-mode forward moves) restored; so is the
    random state (dropout draws from it), or a seeded run's batches and masks would depend on
    whether this process had timed the network before."""
    images = torch.zeros(batch, 3, crop_size, crop_size, device=device).contiguous(memory_format=memory_format)
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    was_training = model.training
    model.train()

    def step(bf16: bool):
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                outputs = model(images)
            sum(output.float().sum() for output in outputs).backward()
            model.zero_grad(set_to_none=True)
        return run
    try:
        with torch.random.fork_rng(devices=[]):
            return _fastest_in_turns({"fp32": step(False), "bf16": step(True)}, batch, rounds, timer)
    finally:
        with torch.no_grad():
            for name, value in model.named_buffers():
                value.copy_(buffers[name])
        model.train(was_training)
