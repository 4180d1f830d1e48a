"""How a setting's text becomes its value, and the checks a value passes (backend/core/settings.py
declares each setting with one of these)."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any
from collections.abc import Callable

Parser = Callable[[str, str], Any]
Check = Callable[[str, Any], None]


def text(name: str, raw: str) -> str:
    return raw


def integer(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"setting {name} must be an integer, got {raw!r}") from None


def number(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"setting {name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):  # float() takes "nan", "inf" and "1e400"
        raise ValueError(f"setting {name} must be a finite number, got {raw!r}")
    return value


def flag(name: str, raw: str) -> bool:
    return raw.lower() in ("1", "true", "yes")


def comma_list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def path(name: str, raw: str) -> Path:
    return Path(raw)


def one_of(choices: Callable[[], tuple[str, ...]]) -> Check:
    def check(name: str, value: Any) -> None:
        if value not in choices():
            raise ValueError(f"setting {name} must be one of {', '.join(choices())}, got {value!r}")
    return check


def store_url(name: str, value: str | None) -> None:
    """An object store's address: `s3://bucket` or `s3://bucket/prefix`, a bucket name as S3 allows."""
    if value is None:
        return
    bucket = value[len("s3://"):].split("/", 1)[0] if value.startswith("s3://") else ""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ValueError(f"setting {name} must be s3://<bucket>/<prefix> with a bucket name of 3 to 63 "
                         f"lowercase letters, digits, dots and hyphens, got {value!r}")
