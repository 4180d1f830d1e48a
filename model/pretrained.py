"""Starting both branches from torchvision's ImageNet weights: a local file, an http(s) URL, or
(by default) torchvision's published weights of the backbone, downloaded once into torchvision's
cache (`$TORCH_HOME/hub/checkpoints`) with torchvision's own download and hash check.

Everything but each branch's last FC layer and the cross-branch layers is copied
(docs/developers/method.md, "Training": those stay randomly initialised).
"""
from __future__ import annotations

import http.client
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import torch

from .backbones import SPECS, get_spec
from .errors import AesemoError
from .network import CrossBranchNet

log = logging.getLogger(__name__)

NO_PRETRAINED = "none"
# torchvision's published URLs (the file name carries the sha256 prefix torch.hub checks); a
# module-level table so that tests can point it at a loopback server
IMAGENET_URLS: dict[str, str] = {name: spec.weights.url for name, spec in SPECS.items() if spec.weights}


def is_url(setting: str | os.PathLike | None) -> bool:
    return isinstance(setting, str) and setting.lower().startswith(("http://", "https://"))


def is_none(setting: str | os.PathLike | None) -> bool:
    return isinstance(setting, str) and setting.strip().lower() == NO_PRETRAINED


def imagenet_url(backbone: str) -> str:
    return IMAGENET_URLS[get_spec(backbone).name]


def cache_path(url: str) -> Path:
    """Where torch.hub's `load_state_dict_from_url` keeps the file of `url` (it reads TORCH_HOME now)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def default_pretrained_path(backbone: str) -> Path:
    """Where torchvision caches the ImageNet weights of `backbone`."""
    return cache_path(imagenet_url(backbone))


def check_pretrained_setting(setting: str | os.PathLike | None) -> None:
    """The start-up check, cheap: a named file must exist (a URL is fetched by `resolve_pretrained`)."""
    if setting and not is_none(setting) and not is_url(setting) and not Path(setting).is_file():
        raise AesemoError(f"pretrained weights file {setting} not found "
                          f"(AESEMO_PRETRAINED / --pretrained take a file, an http(s) URL or {NO_PRETRAINED})")


def weights_on_disk(backbone: str, setting: str | os.PathLike | None) -> bool:
    """Whether `resolve_pretrained` would find weights without a download (a stat, no network)."""
    if is_none(setting):
        return False
    if setting and not is_url(setting):
        return Path(setting).is_file()
    return cache_path(str(setting) if setting else imagenet_url(backbone)).is_file()


def resolve_pretrained(backbone: str, setting: str | os.PathLike | None = None, offline: bool = False,
                       progress: bool | None = None) -> Path | None:
    """The weights file a new `backbone` model starts from; None for a random start.

    `setting` is a file, an http(s) URL, `none`, or None for torchvision's published weights. A
    named file or URL that cannot be had is an AesemoError; the default, when its download fails
    (or `offline` forbids one), logs one line and gives None, so the model is marked `random`."""
    if is_none(setting):
        log.info("init: random (pretrained weights set to %s)", NO_PRETRAINED)
        return None
    if setting and not is_url(setting):
        check_pretrained_setting(setting)
        return Path(setting)
    url = str(setting) if setting else imagenet_url(backbone)
    try:
        return fetch_weights(url, offline, progress)
    except AesemoError as exc:
        if setting:
            raise
        log.warning("init: random (%s; run `aesemo fetch-weights` or set AESEMO_PRETRAINED)", exc)
        return None


def fetch_weights(url: str, offline: bool = False, progress: bool | None = None) -> Path:
    """The cached file of `url`, downloaded first when missing. torch.hub writes to a `.partial`
    file beside the target and moves it only after the sha256 prefix in the file name matched,
    so a failed transfer leaves nothing in the cache."""
    target = cache_path(url)
    if target.is_file():
        return target
    if offline:
        raise AesemoError(f"no ImageNet weights at {target} and AESEMO_OFFLINE forbids downloading {url}")
    match = torch.hub.HASH_REGEX.search(target.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading ImageNet weights %s to %s", url, target)
    try:
        torch.hub.download_url_to_file(url, str(target), match.group(1) if match else None,
                                       progress=sys.stderr.isatty() if progress is None else progress)
    except (OSError, RuntimeError, ValueError, http.client.HTTPException) as exc:
        raise AesemoError(f"download of ImageNet weights {url} to {target} failed: {exc}") from None
    return target


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


def load_pretrained(model: CrossBranchNet, setting: str | os.PathLike | None = None, offline: bool = False,
                    progress: bool | None = None) -> str:
    """Copy ImageNet weights into both branches (`resolve_pretrained` finds them). Returns the
    `init` string for the metadata: `imagenet:<file name>`, or `random` when there are none."""
    file = resolve_pretrained(model.config.backbone, setting, offline, progress)
    if file is None:
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
