"""Every setting of the service, read from environment variables in this one place.

Each setting is listed, with its default, in the README's "Settings" table.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _env_int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"setting {name} must be an integer, got {raw!r}") from None


def _env_float(name: str, default: float, above: float | None = None) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"setting {name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):  # float() takes "nan", "inf" and "1e400"
        raise ValueError(f"setting {name} must be a finite number, got {raw!r}")
    if above is not None and not value > above:
        raise ValueError(f"setting {name} must be above {above:g}, got {raw!r}")
    return value


def _env_list(name: str) -> tuple[str, ...]:
    raw = _env(name, "") or ""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _check_ranges(settings) -> None:
    """ValueError naming the variable and its range for a setting outside it; the training
    ones share the ranges of the HTTP API and the command line (model/limits.py)."""
    from model.limits import TRAINING_LIMITS, Limit

    from backend.votes.consensus import METHODS, POLICY_LIMITS
    ranged = {
        "AESEMO_TRAIN_EPOCHS": (settings.train_epochs, TRAINING_LIMITS["epochs"]),
        "AESEMO_TRAIN_BATCH_SIZE": (settings.train_batch_size, TRAINING_LIMITS["batch_size"]),
        "AESEMO_TRAIN_LR": (settings.train_lr, TRAINING_LIMITS["lr"]),
        "AESEMO_TRAIN_PATIENCE": (settings.train_patience, TRAINING_LIMITS["patience"]),
        "AESEMO_TRAIN_IMAGE_SIZE": (settings.train_image_size, TRAINING_LIMITS["train_size"]),
        "AESEMO_TRAIN_CROP_SIZE": (settings.train_crop_size, TRAINING_LIMITS["crop_size"]),
        "AESEMO_PROMOTION_MARGIN": (settings.promotion_margin, Limit(float, 0, 1)),
        "AESEMO_MAX_FAILED_IMAGES": (settings.max_failed_image_fraction, Limit(float, 0, 1)),
        "AESEMO_CONSENSUS_MIN_ANNOTATORS": (settings.consensus_min_annotators, POLICY_LIMITS["min_annotators"]),
        "AESEMO_CONSENSUS_MIN_AGREEMENT": (settings.consensus_min_agreement, POLICY_LIMITS["min_agreement"]),
        "AESEMO_DOWNLOAD_CACHE_BYTES": (settings.download_cache_bytes, Limit(int, 0, 2 ** 62)),
        "AESEMO_TRAIN_CACHE_BYTES": (settings.train_cache_bytes, Limit(int, 0, 2 ** 62)),
    }
    for name, (value, limit) in ranged.items():
        limit.check(f"setting {name}", value)
    for name, value, choices in (("AESEMO_PROMOTION", settings.promotion, ("metric", "always")),
                                 ("AESEMO_CONSENSUS_METHOD", settings.consensus_method, METHODS)):
        if value not in choices:
            raise ValueError(f"setting {name} must be one of {', '.join(choices)}, got {value!r}")
    if settings.train_crop_size > settings.train_image_size:
        raise ValueError(f"setting AESEMO_TRAIN_CROP_SIZE ({settings.train_crop_size}) must not exceed "
                         f"AESEMO_TRAIN_IMAGE_SIZE ({settings.train_image_size})")


@dataclass(frozen=True)
class Settings:
    def __post_init__(self):
        _check_ranges(self)  # at startup, not in the middle of a job or a request

    label_studio_url: str | None = None
    label_studio_api_key: str | None = field(default=None, repr=False)
    data_dir: Path = Path("aesemo-data")
    backbone: str = "vgg16"
    pretrained_path: str | None = None
    redis_url: str | None = None
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = field(default=None, repr=False)
    aesthetic_control: str = "aesthetic"
    emotion_control: str = "emotion"
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    download_cache_bytes: int = 2 * 1024 ** 3
    train_cache_bytes: int = 2 * 1024 ** 3
    image_timeout_s: float = 10.0
    predict_budget_s: float = 60.0
    read_timeout_s: float = 30.0
    allowed_image_hosts: tuple[str, ...] = ()
    predict_chunk_size: int = 16
    max_tasks_per_request: int = 10_000
    consensus_method: str = "majority"
    consensus_min_annotators: int = 3
    consensus_min_agreement: float = 0.5
    auto_train_threshold: int = 0
    resync_before_snapshot: bool = True
    training_queue: str = "training"
    job_timeout_s: int = 6 * 3600
    job_heartbeat_s: float = 10.0
    min_training_labels: int = 10
    max_failed_image_fraction: float = 0.2
    train_epochs: int = 10
    train_patience: int = 3
    train_batch_size: int = 16
    train_lr: float = 1e-3
    train_device: str | None = None
    train_image_size: int = 256
    train_crop_size: int = 224
    promotion: str = "metric"
    promotion_margin: float = 0.02
    swap_poll_s: float = 5.0


def load_settings() -> Settings:
    """Read the environment now (tests change it between app instances)."""
    return Settings(
        label_studio_url=_env("LABEL_STUDIO_URL"),
        label_studio_api_key=_env("LABEL_STUDIO_API_KEY"),
        data_dir=Path(_env("AESEMO_DATA_DIR", "aesemo-data")),
        backbone=_env("AESEMO_BACKBONE", "vgg16"),
        pretrained_path=_env("AESEMO_PRETRAINED"),
        redis_url=_env("REDIS_URL"),
        basic_auth_user=_env("BASIC_AUTH_USER"),
        basic_auth_pass=_env("BASIC_AUTH_PASS"),
        aesthetic_control=_env("AESEMO_AESTHETIC_CONTROL", "aesthetic"),
        emotion_control=_env("AESEMO_EMOTION_CONTROL", "emotion"),
        max_image_bytes=_env_int("AESEMO_MAX_IMAGE_BYTES", 20 * 1024 * 1024),
        max_image_pixels=_env_int("AESEMO_MAX_IMAGE_PIXELS", 50_000_000),
        download_cache_bytes=_env_int("AESEMO_DOWNLOAD_CACHE_BYTES", 2 * 1024 ** 3),
        train_cache_bytes=_env_int("AESEMO_TRAIN_CACHE_BYTES", 2 * 1024 ** 3),
        image_timeout_s=_env_float("AESEMO_IMAGE_TIMEOUT", 10.0),
        predict_budget_s=_env_float("AESEMO_PREDICT_BUDGET", 60.0, above=0),
        read_timeout_s=_env_float("AESEMO_READ_TIMEOUT", 30.0, above=0),
        allowed_image_hosts=_env_list("AESEMO_ALLOWED_IMAGE_HOSTS"),
        predict_chunk_size=_env_int("AESEMO_PREDICT_CHUNK", 16),
        max_tasks_per_request=_env_int("AESEMO_MAX_TASKS", 10_000),
        consensus_method=_env("AESEMO_CONSENSUS_METHOD", "majority"),
        consensus_min_annotators=_env_int("AESEMO_CONSENSUS_MIN_ANNOTATORS", 3),
        consensus_min_agreement=_env_float("AESEMO_CONSENSUS_MIN_AGREEMENT", 0.5),
        auto_train_threshold=_env_int("AESEMO_AUTO_TRAIN_THRESHOLD", 0),
        resync_before_snapshot=_env("AESEMO_RESYNC_BEFORE_SNAPSHOT", "true").lower() in ("1", "true", "yes"),
        training_queue=_env("AESEMO_QUEUE", "training"),
        job_timeout_s=_env_int("AESEMO_JOB_TIMEOUT", 6 * 3600),
        job_heartbeat_s=_env_float("AESEMO_JOB_HEARTBEAT", 10.0),
        min_training_labels=_env_int("AESEMO_MIN_TRAINING_LABELS", 10),
        max_failed_image_fraction=_env_float("AESEMO_MAX_FAILED_IMAGES", 0.2),
        train_epochs=_env_int("AESEMO_TRAIN_EPOCHS", 10),
        train_patience=_env_int("AESEMO_TRAIN_PATIENCE", 3),
        train_batch_size=_env_int("AESEMO_TRAIN_BATCH_SIZE", 16),
        train_lr=_env_float("AESEMO_TRAIN_LR", 1e-3),
        train_device=_env("AESEMO_TRAIN_DEVICE"),
        train_image_size=_env_int("AESEMO_TRAIN_IMAGE_SIZE", 256),
        train_crop_size=_env_int("AESEMO_TRAIN_CROP_SIZE", 224),
        promotion=_env("AESEMO_PROMOTION", "metric"),
        promotion_margin=_env_float("AESEMO_PROMOTION_MARGIN", 0.02),
        swap_poll_s=_env_float("AESEMO_SWAP_POLL", 5.0),
    )
