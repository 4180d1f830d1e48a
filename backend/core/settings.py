"""Every setting of the service, declared once: each field of `Settings` names its environment
variable, how its text is parsed, its default, its one-line documentation and, for a number,
its range (`limit=`, a `Limit` of model/limits.py; every numeric setting has one, a test checks).

`load_settings` reads them all; the table of docs/operators/settings.md is `python -m
backend.core.settings --markdown` (a test keeps the two equal, and checks docker/.env.example
against the same fields).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any
from collections.abc import Callable

from model.limits import FINETUNE_MODES, PRECISIONS, TRAINING_DEFAULTS, TRAINING_LIMITS, Limit
from model.uncertainty import MEASURES

from backend.core.consensus_policy import METHODS, POLICY_LIMITS, Policy
from backend.core.setting_types import Check, Parser
from backend.core.setting_types import comma_list as _comma_list
from backend.core.setting_types import flag as _flag
from backend.core.setting_types import integer as _integer
from backend.core.setting_types import number as _number
from backend.core.setting_types import one_of as _one_of
from backend.core.setting_types import path as _path
from backend.core.setting_types import store_url as _store_url
from backend.core.setting_types import text as _text


def _uncertainty_measures() -> tuple[str, ...]:
    return tuple(MEASURES)


def _consensus_limit(key: str) -> Callable[[], Limit]:
    return lambda: POLICY_LIMITS[key]


def _consensus_methods() -> tuple[str, ...]:
    return METHODS


def _base_model(name: str, value: Path | None) -> None:
    """Only that it looks like a version folder: `aesemo serve` and `aesemo worker` check at start
    that it holds a trained version (backend/serving/registry.py's prepare_start), and its weights'
    hash is checked when it loads."""
    if value is not None and not (value / "model.json").is_file():
        raise ValueError(f"setting {name}: version folder {value} not found (no model.json)")


_FRACTION = Limit(float, 0, 1)
_CACHE_BYTES = Limit(int, 0, 2 ** 62)
_DECODE_BYTES = Limit(int, 10 ** 6, 2 ** 40)
_COUNT = Limit(int, 0, 10 ** 6)
_SECONDS = Limit(float, 0, 3600, low_open=True)  # a deadline or a wait: 0 fails everything, or spins


def setting(env: str, default: Any, doc: str, *, parse: Parser = _text, check: Check | None = None,
            limit: Limit | Callable[[], Limit] | None = None, shown: str | None = None,
            secret: bool = False) -> Any:
    """A field of `Settings` read from `env`; `limit` its range (a number's), `check` any other
    rule; `shown` is the Settings table's default when the value is not it."""
    return field(default=default, repr=not secret,
                 metadata={"env": env, "parse": parse, "check": check, "limit": limit, "doc": doc, "shown": shown})


def setting_limit(f: Field) -> Limit | None:
    """The field's range; None for a setting that is not a number."""
    limit = f.metadata["limit"]
    return limit() if callable(limit) else limit


def is_numeric(f: Field) -> bool:
    return f.metadata["parse"] in (_integer, _number)


@dataclass(frozen=True)
class Settings:
    def __post_init__(self):
        _check_ranges(self)  # at startup, not in the middle of a job or a request

    label_studio_url: str | None = setting(
        "LABEL_STUDIO_URL", None,
        "Label Studio's address as the backend reaches it: relative image URLs and resyncs go there "
        "(else to `/setup`'s hostname); trusted on a private address; the only host "
        "`LABEL_STUDIO_API_KEY` goes to")
    label_studio_api_key: str | None = setting(
        "LABEL_STUDIO_API_KEY", None,
        "a legacy token or a personal access token (refreshed into 5-minute access tokens); sent only "
        "to `LABEL_STUDIO_URL` (unused without it)", secret=True)
    data_dir: Path = setting(
        "AESEMO_DATA_DIR", Path("aesemo-data"), "versions, caches, the embedded Redis's files", parse=_path)
    backbone: str = setting(
        "AESEMO_BACKBONE", "vgg16", "backbone of a new model (`vgg16`, `resnet18`, `mobilenet_v3_small`)")
    pretrained_path: str | None = setting(
        "AESEMO_PRETRAINED", None,
        "ImageNet weights of a new model: a file, an http(s) URL (downloaded once into torchvision's "
        "cache, `$TORCH_HOME/hub/checkpoints`), or `none` (random start). A missing file or a URL that "
        "cannot be fetched stops `serve`, `worker` and the commands at start; without it, a failed "
        "download of the default starts random (`init: random`)", shown="torchvision's published weights of the backbone")
    offline: bool = setting(
        "AESEMO_OFFLINE", False,
        "never download ImageNet weights: only a file or torchvision's cache is used", parse=_flag)
    base_model: Path | None = setting(
        "AESEMO_BASE_MODEL", None,
        "a trained version folder that projects with the same class lists start from and serve until they "
        "have their own trained version; wins over `aesemo base set`", parse=_path, check=_base_model,
        shown="– (the one `aesemo base set` registered, if any)")
    redis_url: str | None = setting(
        "REDIS_URL", None,
        "a Redis server; without it, an embedded one in `<data dir>/redis/`, started by the first "
        "process of the data directory that needs it and stopped (append-only file fsynced) when the "
        "last of them (serve, worker, stack, a command) exits; one whose data directory was deleted is "
        "stopped by the next start", shown="– (embedded Redis)")
    basic_auth_user: str | None = setting(
        "BASIC_AUTH_USER", None, "HTTP Basic user the service requires (none: no authentication)")
    basic_auth_pass: str | None = setting(
        "BASIC_AUTH_PASS", None, "HTTP Basic password the service requires", secret=True)
    allowed_hosts: tuple[str, ...] = setting(
        "AESEMO_ALLOWED_HOSTS", (),
        "comma-separated host names (a port is ignored; `*`: any) that the admin page and the admin's "
        "endpoints answer under besides loopback ones (`localhost`, 127.0.0.0/8, `::1`); any other `Host` "
        "is refused (403), against DNS rebinding. Label Studio's endpoints answer every host",
        parse=_comma_list, shown="– (loopback only)")
    aesthetic_control: str = setting(
        "AESEMO_AESTHETIC_CONTROL", "aesthetic", "name of the aesthetic `Choices` control in the label config")
    emotion_control: str = setting(
        "AESEMO_EMOTION_CONTROL", "emotion", "name of the emotion `Choices` control in the label config")
    max_image_bytes: int = setting(
        "AESEMO_MAX_IMAGE_BYTES", 20 * 1024 * 1024, "largest image download, in bytes", parse=_integer,
        limit=Limit(int, 1, 2 ** 30))
    max_image_pixels: int = setting(
        "AESEMO_MAX_IMAGE_PIXELS", 50_000_000,
        "largest image (width x height); larger ones are refused as decompression bombs", parse=_integer,
        limit=Limit(int, 1, 10 ** 9))
    max_image_decode_bytes: int = setting(
        "AESEMO_MAX_IMAGE_DECODE_BYTES", 400_000_000,
        "most memory one image's decode may hold, in bytes: width x height x (1 for grey or palette, 2 for "
        "16-bit grey, 4 for other modes, plus 4 for the RGB copy); larger images are refused from their "
        "header, before decoding; the default fits any image within the default pixel limit",
        parse=_integer, limit=_DECODE_BYTES)
    download_cache_bytes: int = setting(
        "AESEMO_DOWNLOAD_CACHE_BYTES", 2 * 1024 ** 3,
        "bytes the cache of downloaded task images (`<data dir>/cache/downloads`) may hold; least "
        "recently used files are evicted past it", parse=_integer, limit=_CACHE_BYTES)
    train_cache_bytes: int = setting(
        "AESEMO_TRAIN_CACHE_BYTES", 2 * 1024 ** 3,
        "bytes the cache of training images (`<data dir>/cache/train256`) may hold; least recently used "
        "files are evicted past it (never a running job's own)", parse=_integer, limit=_CACHE_BYTES)
    image_timeout_s: float = setting(
        "AESEMO_IMAGE_TIMEOUT", 10.0, "seconds for one image download, all in", parse=_number, limit=_SECONDS)
    predict_budget_s: float = setting(
        "AESEMO_PREDICT_BUDGET", 60.0,
        "seconds one `/predict` may spend on its tasks (fetches and forward passes); tasks not done by "
        "then get `[]` and an error of kind `budget`. Keep it below Label Studio's `ML_TIMEOUT_PREDICT` "
        "(100 s)", parse=_number, limit=_SECONDS)
    read_timeout_s: float = setting(
        "AESEMO_READ_TIMEOUT", 30.0,
        "seconds a client has to send a whole request (headers and body) from its first byte; slower "
        "connections are closed", parse=_number, limit=_SECONDS)
    allowed_image_hosts: tuple[str, ...] = setting(
        "AESEMO_ALLOWED_IMAGE_HOSTS", (),
        "comma-separated hosts (`name` or `name:port`) allowed although they resolve to private or "
        "loopback addresses: image hosts, and a Label Studio that `/setup` names when "
        "`LABEL_STUDIO_URL` is not it", parse=_comma_list)
    predict_chunk_size: int = setting(
        "AESEMO_PREDICT_CHUNK", 16, "tasks per batched forward pass", parse=_integer,
        limit=Limit(int, 1, 1024))
    uncertainty: str = setting(
        "AESEMO_UNCERTAINTY", "least_confidence",
        "a prediction's `score`, the certainty Label Studio's Data Manager sorts by (ascending: least "
        "certain first): `least_confidence`, `margin` or `entropy`, of the less certain head",
        check=_one_of(_uncertainty_measures))
    ls_recheck_s: float = setting(
        "AESEMO_LS_RECHECK", 60.0,
        "seconds between checks, on Label Studio's `/setup` calls, that its project sorts by the served "
        "version's scores (ML backend titled with the version) and has the \"Least certain first\" tab; "
        "0 leaves Label Studio's project as it is", parse=_number, limit=Limit(float, 0, 86_400))
    max_tasks_per_request: int = setting(
        "AESEMO_MAX_TASKS", 10_000, "most tasks accepted in one `/predict` body", parse=_integer,
        limit=Limit(int, 1, 10 ** 6))
    suggest_untrained: bool = setting(
        "AESEMO_SUGGEST_UNTRAINED", False,
        "pre-annotate with a model version that was never trained on labels (its suggestions are "
        "random); off: `/predict` answers `[]` per task until the project has a trained version", parse=_flag)
    suggestion_gate: bool = setting(
        "AESEMO_SUGGESTION_GATE", True,
        "suggest a task type (aesthetic, emotion) of a trained version only when its held-out evidence beats "
        "the trivial answer (the most common class, every time): the 95 % interval of the difference in "
        "held-out accuracy, over resamples of the held-out tasks, above 0; off: every trained version suggests both",
        parse=_flag)
    control_fraction: float = setting(
        "AESEMO_CONTROL_FRACTION", 0.1,
        "share of each project's tasks that never get a suggestion (control tasks, chosen by a hash of the task "
        "id): `/predict` and the refresh give them an empty result with its score, so the least-certain "
        "ordering still places them, and what annotators do without a suggestion can be measured; 0: none",
        parse=_number, limit=Limit(float, 0, 0.5))
    consensus_method: str = setting(
        "AESEMO_CONSENSUS_METHOD", Policy.method, "default consensus method (`majority` or `dawid_skene`)",
        check=_one_of(_consensus_methods))
    consensus_min_annotators: int = setting(
        "AESEMO_CONSENSUS_MIN_ANNOTATORS", Policy.min_annotators, "votes a task needs before it can be agreed",
        parse=_integer, limit=_consensus_limit("min_annotators"))
    consensus_min_agreement: float = setting(
        "AESEMO_CONSENSUS_MIN_AGREEMENT", Policy.min_agreement, "least share of the top class for agreement",
        parse=_number, limit=_consensus_limit("min_agreement"))
    rubber_stamp_seconds: float = setting(
        "AESEMO_RUBBER_STAMP_SECONDS", Policy.rubber_stamp_seconds,
        "default of the consensus policy's `rubber_stamp_seconds`: a vote that equals the suggestion its "
        "annotator was shown, made in less time, is set aside unless the policy's `count_fast_agreement`",
        parse=_number, limit=_consensus_limit("rubber_stamp_seconds"))
    auto_train_threshold: int = setting(
        "AESEMO_AUTO_TRAIN_THRESHOLD", 0, "ask for training each time this many new labels are agreed",
        parse=_integer, limit=Limit(int, 0, 10 ** 6), shown="0 (off)")
    resync_before_snapshot: bool = setting(
        "AESEMO_RESYNC_BEFORE_SNAPSHOT", True, "resync from Label Studio before each snapshot", parse=_flag)
    training_queue: str = setting("AESEMO_QUEUE", "training", "RQ queue of training jobs")
    job_timeout_s: int = setting(
        "AESEMO_JOB_TIMEOUT", 6 * 3600, "seconds a training job may run", parse=_integer,
        limit=Limit(int, 60, 30 * 86400))
    job_heartbeat_s: float = setting(
        "AESEMO_JOB_HEARTBEAT", 10.0,
        "seconds between a training worker's heartbeats; a job whose worker missed them for 3x this "
        "(+5 s) is reported failed", parse=_number, limit=Limit(float, 0.5, 3600))
    min_training_labels: int = setting(
        "AESEMO_MIN_TRAINING_LABELS", 10, "consensus-labelled tasks a project needs before training",
        parse=_integer, limit=Limit(int, 1, 10 ** 6))
    max_failed_image_fraction: float = setting(
        "AESEMO_MAX_FAILED_IMAGES", 0.2, "largest share of training images that may fail to download",
        parse=_number, limit=_FRACTION)
    train_epochs: int = setting(
        "AESEMO_TRAIN_EPOCHS", TRAINING_DEFAULTS["epochs"], "training epochs (a request's parameters win)",
        parse=_integer, limit=TRAINING_LIMITS["epochs"])
    train_patience: int = setting(
        "AESEMO_TRAIN_PATIENCE", TRAINING_DEFAULTS["patience"],
        "early stopping: epochs without a better held-out score before a job stops; 0 switches it off",
        parse=_integer, limit=TRAINING_LIMITS["patience"])
    train_batch_size: int = setting(
        "AESEMO_TRAIN_BATCH_SIZE", TRAINING_DEFAULTS["batch_size"],
        "training batch size (a request's parameters win)",
        parse=_integer, limit=TRAINING_LIMITS["batch_size"])
    train_lr: float = setting(
        "AESEMO_TRAIN_LR", TRAINING_DEFAULTS["lr"], "training learning rate (a request's parameters win)",
        parse=_number, limit=TRAINING_LIMITS["lr"])
    train_device: str | None = setting(
        "AESEMO_TRAIN_DEVICE", None, "device of the training worker (`aesemo worker --device` sets it)",
        shown="CUDA when present")
    train_image_size: int = setting(
        "AESEMO_TRAIN_IMAGE_SIZE", TRAINING_DEFAULTS["train_size"], "training resize size in pixels (the patent's)",
        parse=_integer, limit=TRAINING_LIMITS["train_size"])
    train_crop_size: int = setting(
        "AESEMO_TRAIN_CROP_SIZE", TRAINING_DEFAULTS["crop_size"],
        "training random-crop size in pixels (the patent's; not above the resize size)",
        parse=_integer, limit=TRAINING_LIMITS["crop_size"])
    train_precision: str = setting(
        "AESEMO_TRAIN_PRECISION", TRAINING_DEFAULTS["precision"],
        "what training computes in. `auto`: bf16 autocast on CUDA where supported and on a CPU with native bf16 "
        "(AVX-512-BF16, AMX) when a timed training step is at least 10 % faster (resnet18 1.8x, vgg16 2x, "
        "mobilenet_v3_small slower here), else fp32; `fp32` or `bf16` (autocast over fp32 weights): that, untimed",
        check=_one_of(lambda: PRECISIONS))
    finetune: str = setting(
        "AESEMO_FINETUNE", TRAINING_DEFAULTS["finetune"],
        "which layers a job started from pretrained or base weights trains: `full`, every layer (the patent's; "
        "benchmarks/learning.py measured it best from 24 and 96 labels); `auto`, the backbone frozen for small sets "
        "and its deeper groups unfrozen as the set grows (AESEMO_FULL_FINETUNE_LABELS): seconds instead of minutes, "
        "less accurate; `frozen`, every convolution group frozen (a random start always trains every layer)",
        check=_one_of(lambda: FINETUNE_MODES))
    full_finetune_labels: int = setting(
        "AESEMO_FULL_FINETUNE_LABELS", TRAINING_DEFAULTS["full_finetune_labels"],
        "with AESEMO_FINETUNE=auto: training images from which every layer trains; "
        "below it the backbone's deepest groups unfreeze one per doubling of the set, the smallest sets "
        "train the heads only on cached features (a random start always trains every layer)",
        parse=_integer, limit=TRAINING_LIMITS["full_finetune_labels"])
    promotion: str = setting(
        "AESEMO_PROMOTION", "metric", "promotion rule of a new version: `metric` or `always`",
        check=_one_of(lambda: ("metric", "always")))
    promotion_margin: float = setting(
        "AESEMO_PROMOTION_MARGIN", 0.02,
        "how much worse (mean held-out macro-F1) a new version may be and still be promoted",
        parse=_number, limit=_FRACTION)
    promotion_inconclusive: str = setting(
        "AESEMO_PROMOTION_INCONCLUSIVE", "more-labels",
        "when the held-out evidence cannot decide (too few tasks, or the interval of the difference spans 0): "
        "`more-labels` promotes the version trained on more labels unless its outputs are broken, `current` "
        "keeps the current one", check=_one_of(lambda: ("more-labels", "current")))
    heldout_fraction: float = setting(
        "AESEMO_HELDOUT_FRACTION", 0.2,
        "share of a project's tasks held out (by a hash of the project and task id: a task never moves out "
        "of it; raising it only adds tasks)", parse=_number, limit=_FRACTION)
    min_heldout: int = setting(
        "AESEMO_MIN_HELDOUT", 30,
        "labelled held-out tasks per task type below which a job does not early-stop on them (it trains every "
        "epoch and keeps the last) and promotion calls the evidence inconclusive", parse=_integer, limit=_COUNT)
    predict_queue: str = setting(
        "AESEMO_PREDICT_QUEUE", "predict",
        "RQ queue of prediction-refresh jobs (`aesemo worker` serves it beside the training queue)")
    refresh_batch: int = setting(
        "AESEMO_REFRESH_BATCH", 64,
        "tasks a refresh job predicts and writes into Label Studio per step", parse=_integer,
        limit=Limit(int, 1, 1000))
    refresh_keep_old: bool = setting(
        "AESEMO_REFRESH_KEEP_OLD", False,
        "keep a refreshed task's earlier predictions in Label Studio; off: the refresh job deletes "
        "them (every version's) before it writes the current version's", parse=_flag)
    prediction_ttl_s: int = setting(
        "AESEMO_PREDICTION_TTL", 7 * 86400,
        "seconds a project version's stored predictions (Redis) live after their last write",
        parse=_integer, limit=Limit(int, 60, 365 * 86400))
    inference_path: str = setting(
        "AESEMO_INFERENCE_PATH", "auto",
        "`auto`: serve a version from its exported OpenVINO runtime (int8, else float32) once one passed "
        "the agreement check, made by the training job that promotes it, else in the background on first load; "
        "`pytorch`: always the PyTorch predictor, and no export",
        check=_one_of(lambda: ("auto", "pytorch")))
    predictor_precision: str = setting(
        "AESEMO_PREDICTOR_PRECISION", "auto",
        "what the PyTorch predictor computes in. `auto`: on a CPU with native bf16 the faster of fp32 and bf16, "
        "timed on a small batch when a model loads (once per backbone, input size and threads in a process), "
        "fp32 on other CPUs, bf16 on CUDA where supported; `fp32` or `bf16`: that, untimed",
        check=_one_of(lambda: PRECISIONS))
    runtime_min_agreement: float = setting(
        "AESEMO_RUNTIME_MIN_AGREEMENT", 0.99,
        "least top-1 agreement, per task, of an exported runtime with the float32 PyTorch outputs for it "
        "to serve: a share of a version's own held-out images; on generated images, the level the check "
        "tells from 2 points below (604 images, 593 agreeing, for 0.99)", parse=_number, limit=_FRACTION)
    swap_poll_s: float = setting(
        "AESEMO_SWAP_POLL", 5.0, "seconds between a serving process's checks of the version pointers",
        parse=_number, limit=Limit(float, 0.1, 3600))
    version_store: str | None = setting(
        "AESEMO_VERSION_STORE", None,
        "`s3://<bucket>/<prefix>`: trained versions are published to this S3-compatible bucket (endpoint "
        "`AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3`, credentials and `AWS_DEFAULT_REGION` as the AWS SDK "
        "reads them) and each process keeps the ones it uses in `<data dir>/projects`, a cache; without it the "
        "data directory holds them (one machine, or a shared volume)", check=_store_url,
        shown="– (the data directory)")
    version_cache_bytes: int = setting(
        "AESEMO_VERSION_CACHE_BYTES", 20 * 1024 ** 3,
        "with `AESEMO_VERSION_STORE`: bytes of downloaded versions a host keeps; least recently used ones are "
        "removed past it (downloaded again when needed)", parse=_integer, limit=_CACHE_BYTES)
    keep_versions: int = setting(
        "AESEMO_KEEP_VERSIONS", 0,
        "trained versions kept per project: after each training job the older ones are deleted (from the data "
        "directory and the store), except the current one, the base and the pinned ones; 0 keeps every one",
        parse=_integer, limit=_COUNT, shown="0 (all)")


def setting_fields() -> tuple[Field, ...]:
    return fields(Settings)


def _check_ranges(settings: Settings) -> None:
    """ValueError naming the variable and its range for a setting outside it; the training
    ones share the ranges of the HTTP API and the command line (model/limits.py)."""
    for f in setting_fields():
        limit = setting_limit(f)
        if limit is not None:
            limit.check(f"setting {f.metadata['env']}", getattr(settings, f.name))
        if f.metadata["check"] is not None:
            f.metadata["check"](f.metadata["env"], getattr(settings, f.name))
    if settings.train_crop_size > settings.train_image_size:
        raise ValueError(f"setting AESEMO_TRAIN_CROP_SIZE ({settings.train_crop_size}) must not exceed "
                         f"AESEMO_TRAIN_IMAGE_SIZE ({settings.train_image_size})")


def _from_environment(f: Field) -> Any:
    raw = os.environ.get(f.metadata["env"])
    if raw is None or raw == "":  # an empty value means the default (docker/.env.example)
        return f.default
    return f.metadata["parse"](f.metadata["env"], raw)


def load_settings() -> Settings:
    """Read the environment now (tests change it between app instances)."""
    return Settings(**{f.name: _from_environment(f) for f in setting_fields()})


def env_text(value: Any) -> str:
    """A default as written in an environment file: the text that parses back to it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _readme_default(f: Field) -> str:
    if f.metadata["shown"] is not None:
        return f.metadata["shown"]
    if f.default is None or f.default == ():
        return "–"
    text = env_text(f.default)
    return f"`{text}`" if isinstance(f.default, (str, Path)) else text


def _readme_range(f: Field) -> str:
    limit = setting_limit(f)
    return limit.span() if limit is not None else "–"


def markdown_table() -> str:
    """The table of docs/operators/settings.md."""
    rows = ["| variable | default | range | meaning |", "|---|---|---|---|"]
    rows += [f"| `{f.metadata['env']}` | {_readme_default(f)} | {_readme_range(f)} | {f.metadata['doc']} |"
             for f in setting_fields()]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backend.core.settings",
                                     description="Print the settings' declaration.")
    parser.add_argument("--markdown", action="store_true", help="the Settings table of docs/operators/settings.md")
    parser.parse_args(argv)
    print(markdown_table(), end="")


if __name__ == "__main__":
    main()
