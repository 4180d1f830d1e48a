"""The argument types the `aesemo` subcommands share: a training number within its range, a share."""
from __future__ import annotations

import argparse

from model.limits import TRAINING_LIMITS, LimitError


def share(text: str) -> float:
    """An argparse type for a share in [0, 1]: `--min-agreement 2` stops with one line naming it."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def limited(name: str):
    """An argparse type for the training number `name`: its range is the HTTP API's and the
    settings' (model/limits.py), so `--lr inf` or `--epochs 0` stops with one line naming it."""
    limit = TRAINING_LIMITS[name]

    def parse(text: str):
        try:
            return limit.check(name, limit.kind(text))
        except ValueError as exc:
            message = str(exc) if isinstance(exc, LimitError) else f"{name} must be {limit.describe()}, got {text!r}"
            raise argparse.ArgumentTypeError(message) from None
    return parse
