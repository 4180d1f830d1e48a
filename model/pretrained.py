"""Starting both branches from a local torchvision ImageNet file (never from the network).

Everything but each branch's last FC layer and the cross-branch layers is copied (method.md,
"Training": those stay randomly initialised).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .backbones import get_spec
from .errors import AesemoError
from .network import CrossBranchNet

log = logging.getLogger(__name__)


def default_pretrained_path(backbone: str) -> Path:
    """Where torchvision caches the ImageNet weights of `backbone`."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(torch_home) / "hub" / "checkpoints" / get_spec(backbone).pretrained_file


def branch_state_from_torchvision(model: CrossBranchNet, source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision state dict onto both branches of `model` (keys `branch_a.…`, `branch_e.…`)."""
    spec = get_spec(model.config.backbone)
    group_of = {child: g for g, children in enumerate(spec.groups[:model.num_groups]) for child in children}
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        target = _branch_key(key, spec, group_of)
        if target is not None:
            for branch in ("branch_a", "branch_e"):
                mapped[f"{branch}.{target}"] = tensor
    return mapped


def _branch_key(key, spec, group_of) -> str | None:
    for source_layer, head_layer in spec.head_source.items():
        if key.startswith(source_layer + "."):
            return f"head.{head_layer}{key[len(source_layer):]}"
    if not key.startswith(spec.source_prefix):
        return None
    rest = key[len(spec.source_prefix):]
    child = rest.split(".", 1)[0]
    if child not in group_of:
        return None
    return f"groups.{group_of[child]}.{rest}"


def load_pretrained(model: CrossBranchNet, path: str | os.PathLike | None = None) -> str:
    """Copy ImageNet weights into both branches. Returns the `init` string for the metadata:
    `imagenet:<file name>` or `random` (with a warning) when no file is there."""
    file = Path(path) if path else default_pretrained_path(model.config.backbone)
    if not file.is_file():
        if path:
            raise AesemoError(f"pretrained weights file {file} not found")
        log.warning("init: random (no ImageNet weights at %s; pass --pretrained or set AESEMO_PRETRAINED)", file)
        return "random"
    try:
        # weights_only: a .pth is a pickle; refuse anything but plain tensors
        source = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AesemoError(f"pretrained weights file {file} cannot be read: {exc}") from None
    mapped = branch_state_from_torchvision(model, source)
    own = model.state_dict()
    wrong = [k for k, v in mapped.items() if k not in own or own[k].shape != v.shape]
    # every tensor the backbone's own layers hold must come from the file, or the start
    # would silently be part pretrained, part random
    expected = branch_state_from_torchvision(model, get_spec(model.config.backbone).build().state_dict())
    missing = sorted(set(expected) - set(mapped))
    if not mapped or wrong or missing:
        raise AesemoError(f"{file} does not fit backbone {model.config.backbone}: {len(mapped)} tensors "
                          f"mapped, mismatched: {wrong[:5]}, missing: {missing[:5]}")
    model.load_state_dict(mapped, strict=False)
    log.info("init: imagenet (%d tensors from %s into both branches)", len(mapped), file)
    return f"imagenet:{file.name}"
