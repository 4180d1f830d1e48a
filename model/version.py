"""A model version on disk: a folder with `weights.safetensors` and `model.json`.

`model.json` holds the architecture, the class lists, the pixel mean, how the weights were
initialised, the metrics and the sha256 of the weights file; loading refuses weights whose
hash differs, so a half-copied or tampered file is never served.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import VersionError
from .network import CrossBranchNet, NetConfig

WEIGHTS_FILE = "weights.safetensors"
META_FILE = "model.json"
FORMAT = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_version(folder: str | Path, model: CrossBranchNet, meta: dict) -> dict:
    """Write weights and metadata; returns the metadata as written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS_FILE
    _write_atomically(weights, lambda tmp: save_file(state, tmp))
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
    _write_atomically(folder / META_FILE,
                      lambda tmp: Path(tmp).write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8"))
    return full


def read_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise VersionError(f"version folder {folder} not found")
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VersionError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VersionError(f"{path} cannot be read: {exc}") from None
    if not isinstance(meta, dict):
        raise VersionError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    for key in ("architecture", "weights_sha256", "pixel_mean"):
        if key not in meta:
            raise VersionError(f"{path} has no {key!r}")
    return meta


def load_version(folder: str | Path) -> tuple[CrossBranchNet, dict]:
    """The network (on the CPU, fp32) and its metadata, after checking the weights' hash."""
    folder = Path(folder)
    meta = read_meta(folder)
    weights = folder / meta.get("weights_file", WEIGHTS_FILE)
    if not weights.is_file():
        raise VersionError(f"{weights} is missing")
    actual = sha256_file(weights)
    if actual != meta["weights_sha256"]:
        raise VersionError(f"{weights}: sha256 {actual[:12]}… does not match model.json "
                           f"({str(meta['weights_sha256'])[:12]}…); refusing to load")
    try:
        config = NetConfig.from_dict(meta["architecture"])
    except (TypeError, ValueError) as exc:
        raise VersionError(f"{folder / META_FILE}: bad architecture: {exc}") from None
    # built on the meta device, so no time goes into random weights that the file replaces
    # (15 of 16 s for vgg16 on a 2-core CPU); `assign` then adopts the loaded tensors
    with torch.device("meta"):
        model = CrossBranchNet(config)
    try:
        state = load_file(weights)
        model.load_state_dict(state, strict=True, assign=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise VersionError(f"{weights} does not fit the architecture in model.json: {exc}") from None
    return model, meta
