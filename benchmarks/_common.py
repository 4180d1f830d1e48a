"""Helpers shared by the benchmark scripts."""
from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def flops_per_image(model: torch.nn.Module, size: int = 224) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def interleaved_seconds(candidates: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each candidate, timed in turns (A, B, A, B, ...) after one
    warm-up call each, so that load from other processes falls on all of them alike."""
    for run in candidates.values():
        run()
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}
