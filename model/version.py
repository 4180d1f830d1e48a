"""A model version on disk: a folder with `weights.safetensors` and `model.json`.

`model.json` holds the architecture, the class lists, the pixel mean, how the weights were
initialised, whether the task heads were ever trained on labels (`trained`, see `is_trained`),
the metrics and the sha256 of the weights file; loading refuses weights whose
hash differs, so a half-copied or tampered file is never served.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .classes import TASKS
from .errors import VersionError
from .files import write_atomically, write_text_atomically
from .limits import TRAINING_LIMITS, Limit, LimitError, shown
from .network import CrossBranchNet, NetConfig
from .precision import DTYPE_NAMES

WEIGHTS_FILE = "weights.safetensors"
META_FILE = "model.json"
# the faster CPU path's record (model/runtime.py): which exported files serve, their sha256 and
# their measured agreement; those files are hash-checked before loading, like the weights
RUNTIME_FILE = "runtime.json"
FORMAT = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shown_path(path: Path) -> str:
    """A version's file as error messages name it: `v0003/model.json`. They reach HTTP clients
    (promotion, the version listings), who have no business knowing the server's folders."""
    return f"{path.parent.name}/{path.name}"


def checked_file(path: Path, expected: str | None = None) -> str:
    """The file's sha256; VersionError when it is missing or differs from `expected`, so a
    half-copied or tampered file is never loaded."""
    if not path.is_file():
        raise VersionError(f"{shown_path(path)} is missing")
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise VersionError(f"{shown_path(path)}: sha256 {actual[:12]}… does not match the recorded "
                           f"{str(expected)[:12]}…; refusing to load")
    return actual


def save_version(folder: str | Path, model: CrossBranchNet, meta: dict) -> dict:
    """Write weights and metadata; returns the metadata as written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS_FILE
    write_atomically(weights, lambda temp: save_file(state, temp))
    full = {
        "format": FORMAT,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **meta,
        "architecture": model.config.to_dict(),
        "classes": {task: list(names) for task, names in model.config.classes.items()},
        "parameters": model.parameter_count(),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(weights),
    }
    write_text_atomically(folder / META_FILE, json.dumps(full, indent=2) + "\n")
    return full


def read_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise VersionError(f"version folder {folder.name} not found")
    path = folder / META_FILE
    meta = read_version_json(path)
    if not isinstance(meta, dict):
        raise VersionError(f"{shown_path(path)} must hold a JSON object, got {type(meta).__name__}")
    problem = meta_problem(meta)
    if problem:
        raise VersionError(f"{shown_path(path)}: {problem}")
    return meta


def read_version_json(path: Path):
    """A version's JSON file, parsed; VersionError naming the file for anything json.loads
    refuses: bad syntax, an integer over Python's 4,300 digits (ValueError), nesting deeper
    than the interpreter's recursion limit (RecursionError)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VersionError(f"{shown_path(path)} is missing") from None
    except OSError as exc:  # its text names the absolute path: the reason alone
        raise VersionError(f"{shown_path(path)} cannot be read: {exc.strerror or type(exc).__name__}") from None
    except RecursionError:
        raise VersionError(f"{shown_path(path)} cannot be read: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and the digit limit among them
        raise VersionError(f"{shown_path(path)} cannot be read: {exc}") from None


_REQUIRED = ("architecture", "weights_sha256", "pixel_mean", "classes")
_TEXTS = ("created_at", "init", "origin", "parent_version", "snapshot_id", "job_id")
_FLAGS = ("trained", "center_crop_eval")
_SHARE = Limit(float, 0, 1)


def meta_problem(meta: dict) -> str | None:
    """What is wrong with a model.json's shape, None when nothing: every field that a listing,
    the admin page, promotion or a loader reads is checked once, here, so none of them meets a
    surprise type (a `"metrics": "x"` would otherwise be a 500)."""
    for check in (_required_problem, _plain_problem, _classes_problem, _metrics_problem, _training_problem):
        problem = check(meta)
        if problem:
            return problem
    return None


def _required_problem(meta: dict) -> str | None:
    missing = [key for key in _REQUIRED if key not in meta]
    if missing:
        return f"has no {missing[0]!r}"
    if not isinstance(meta["weights_sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", meta["weights_sha256"]):
        return "'weights_sha256' must be 64 lowercase hex digits"
    name = meta.get("weights_file", WEIGHTS_FILE)
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
        return "'weights_file' must name a file inside the version folder"
    try:
        NetConfig.from_dict(meta["architecture"])
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        return f"bad 'architecture': {exc}"
    return None


def _plain_problem(meta: dict) -> str | None:
    for key in _TEXTS:
        if key in meta and not isinstance(meta[key], str):
            return f"{key!r} must be a string, got {shown(meta[key])}"
    for key in _FLAGS:
        if key in meta and not isinstance(meta[key], bool):
            return f"{key!r} must be true or false, got {shown(meta[key])}"
    for key, low in (("pixel_mean", -math.inf), ("pixel_std", 0.0)):
        value = meta.get(key, [1.0, 1.0, 1.0])
        if not (isinstance(value, list) and len(value) == 3 and all(_finite(v) and v > low for v in value)):
            return f"{key!r} must be a list of 3 finite numbers{' above 0' if low == 0 else ''}, got {shown(value)}"
    try:
        for key in ("train_size", "crop_size"):
            if key in meta:
                TRAINING_LIMITS[key].check(key, meta[key])
    except LimitError as exc:
        return str(exc)
    return None


def _classes_problem(meta: dict) -> str | None:
    classes, architecture = meta["classes"], NetConfig.from_dict(meta["architecture"])
    if not isinstance(classes, dict):
        return f"'classes' must be an object, got {shown(classes)}"
    for task in TASKS:
        names = classes.get(task)
        if not isinstance(names, list) or tuple(names) != architecture.classes[task]:
            return (f"'classes.{task}' must be the architecture's list {list(architecture.classes[task])}, "
                    f"got {shown(names)}")
    return None


def _metrics_problem(meta: dict) -> str | None:
    metrics = meta.get("metrics", {})
    if not isinstance(metrics, dict):
        return f"'metrics' must be an object, got {shown(metrics)}"
    for task, values in metrics.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            return f"'metrics.{task}' must be an object or null, got {shown(values)}"
        try:
            for key in ("accuracy", "macro_f1"):
                if key in values:
                    _SHARE.check(f"'metrics.{task}.{key}'", values[key])
        except LimitError as exc:
            return str(exc)
        confusion = values.get("confusion", [])
        if not (isinstance(confusion, list) and all(isinstance(row, list) and all(_count(c) for c in row)
                                                    for row in confusion)):
            return f"'metrics.{task}.confusion' must be a list of lists of counts"
    return None


def _training_problem(meta: dict) -> str | None:
    training = meta.get("training", {})
    if not isinstance(training, dict):
        return f"'training' must be an object, got {shown(training)}"
    if "seconds" in training and not _seconds(training["seconds"]):
        return f"'training.seconds' must be a finite number of at least 0, got {shown(training['seconds'])}"
    for key in ("device", "precision"):
        if key in training and not isinstance(training[key], str):
            return f"'training.{key}' must be a string, got {shown(training[key])}"
    crossval = training.get("crossval")
    if crossval is not None and not isinstance(crossval, dict):
        return f"'training.crossval' must be an object or null, got {shown(crossval)}"
    if crossval and "seconds" in crossval and not _seconds(crossval["seconds"]):
        return f"'training.crossval.seconds' must be a finite number of at least 0, got {shown(crossval['seconds'])}"
    return None


def _seconds(value) -> bool:
    return _finite(value) and value >= 0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def training_seconds(meta: dict) -> float | None:
    """Seconds a checked version's training took, cross-validation folds included (a job's small
    set trains them before the final network); None when model.json does not say."""
    training = meta.get("training") or {}
    if "seconds" not in training:
        return None
    return training["seconds"] + (training.get("crossval") or {}).get("seconds", 0)


def training_dtype(meta: dict) -> str | None:
    """"fp32" or "bf16": what a checked version trained in (`training.precision` reads "bf16
    (measured ...)"); None when it does not say, or says something else."""
    name = ((meta.get("training") or {}).get("precision") or "").split(" ", 1)[0]
    return name if name in DTYPE_NAMES.values() else None


def is_trained(meta: dict) -> bool:
    """Whether the version's task heads ever saw a labelled image. `"trained"` says so; a
    model.json without it counts as trained when it holds a training history or held-out metrics,
    which only training writes."""
    if "trained" in meta:
        return meta["trained"]
    return bool(meta.get("training") or meta.get("metrics"))


def first_non_finite(tensors: dict) -> str | None:
    """The name of the first floating tensor holding a NaN or an infinity; None when all are finite."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_outputs(model: CrossBranchNet, meta: dict) -> None:
    """VersionError when the network answers a non-finite logit for probe images: finite but
    huge weights can overflow, and softmax then gives NaN for every image."""
    size = min(int(meta.get("crop_size", 224)), 64)  # the pooled features scale alike; a CPU pays less
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    model.eval()
    try:
        with torch.no_grad():
            logits = model(probe)
    except RuntimeError as exc:
        raise VersionError(f"it cannot run on a {size}x{size} probe image: {exc}") from None
    for task, values in zip(TASKS, logits):
        if not bool(torch.isfinite(values).all()):
            raise VersionError(f"its {task} outputs are not finite numbers (NaN or infinity) on a probe image")


def load_version(folder: str | Path) -> tuple[CrossBranchNet, dict]:
    """The network (on the CPU, fp32) and its metadata, after checking the weights' hash."""
    folder = Path(folder)
    meta = read_meta(folder)
    weights = folder / meta.get("weights_file", WEIGHTS_FILE)
    checked_file(weights, meta["weights_sha256"])
    try:
        config = NetConfig.from_dict(meta["architecture"])
    except (TypeError, ValueError) as exc:
        raise VersionError(f"{shown_path(folder / META_FILE)}: bad architecture: {exc}") from None
    # built on the meta device, so no time goes into random weights that the file replaces
    # (15 of 16 s for vgg16 on a 2-core CPU); `assign` then adopts the loaded tensors
    with torch.device("meta"):
        model = CrossBranchNet(config)
    try:
        state = load_file(weights)
        model.load_state_dict(state, strict=True, assign=True)
    except OSError as exc:  # its text names the absolute path: the reason alone
        raise VersionError(f"{shown_path(weights)} cannot be read: {exc.strerror or type(exc).__name__}") from None
    except (SafetensorError, RuntimeError) as exc:
        raise VersionError(f"{shown_path(weights)} does not fit the architecture in model.json: {exc}") from None
    bad = first_non_finite(state)
    if bad is not None:
        raise VersionError(f"{shown_path(weights)}: tensor {bad} holds NaN or infinite values; refusing to load")
    return model, meta
