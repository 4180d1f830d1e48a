"""The allowed range and the default of every training number, and every training choice list,
each declared once. The HTTP API, the command line, the settings and `TrainConfig` all read them,
so a value refused in one place is refused in all. No torch here: the settings import it.

JSON and the command line both let through NaN, infinity and integers of any size (`1e400` is
infinity to Python's float); a range check that compares without converting refuses them all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


class LimitError(ValueError):
    """A number of the wrong type or outside its range; the message names the field and the range."""


@dataclass(frozen=True)
class Limit:
    kind: type                 # int or float; a float field takes an int too
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        return f"{'an integer' if self.kind is int else 'a finite number'} in {self.span()}"

    def span(self) -> str:
        """`1..1000` for integers, `(0, 1]` for numbers."""
        if self.kind is int:
            return f"{self.low}..{self.high}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def check(self, name: str, value):
        """`value` (an int as a float for a float field) when allowed; LimitError otherwise."""
        if self._allowed(value):
            return float(value) if self.kind is float else value
        raise LimitError(f"{name} must be {self.describe()}, got {shown(value)}")

    def _allowed(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        # int and float compare exactly in Python: no float() that could overflow on 10**400
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


def shown(value, width: int = 40) -> str:
    """A value for an error message, cut short (an integer may have hundreds of digits)."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


TRAINING_LIMITS: dict[str, Limit] = {
    "epochs": Limit(int, 1, 1000),
    "batch_size": Limit(int, 1, 1024),
    "lr": Limit(float, 0, 1, low_open=True),
    "momentum": Limit(float, 0, 1, high_open=True),
    "weight_decay": Limit(float, 0, 1),
    "val_fraction": Limit(float, 0, 1, high_open=True),
    "patience": Limit(int, 0, 1000),
    "seed": Limit(int, 0, 2**32 - 1),       # numpy's seed takes no more
    "lam": Limit(float, 0, 100),
    "train_size": Limit(int, 16, 1024),
    "crop_size": Limit(int, 16, 1024),
    "full_finetune_labels": Limit(int, 1, 10**9),
    "cache_views": Limit(int, 1, 64),
    "feature_cache_bytes": Limit(int, 0, 2**62),
}


def check_training_value(name: str, value):
    return TRAINING_LIMITS[name].check(name, value)


SCHEDULES = ("cosine", "step", "constant")
BALANCES = ("loss", "sampling", "off")           # skewed labels: class weights, balanced batches, neither
FINETUNE_MODES = ("full", "frozen", "auto")      # model/finetune.py
PRECISIONS = ("auto", "fp32", "bf16")            # model/precision.py

TRAINING_DEFAULTS: dict[str, object] = {
    "epochs": 10,
    "batch_size": 16,
    "lr": 1e-3,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "val_fraction": 0.2,
    "patience": 3,              # epochs without a better held-out score before stopping; 0: never
    "seed": 0,
    "lam": 0.25,                # the emotion loss's weight (the patent's lambda)
    "train_size": 256,          # the patent's resize, then random crops of crop_size
    "crop_size": 224,
    "precision": "auto",
    "class_balance": "loss",
    "finetune": "full",
    "full_finetune_labels": 1000,
    "cache_views": 4,
    "feature_cache_bytes": 2 * 1024 ** 3,
}
