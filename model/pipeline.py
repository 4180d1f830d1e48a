"""From a manifest to a version folder: the steps `aesemo init` and `aesemo train` run."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from .bootstrap import with_intervals
from .crossval import CrossValidation, choose_epochs
from .dataset import TrainingData, load_training_data
from .errors import AesemoError
from .heldout import labelled_counts, named_split
from .images import DEFAULT_MAX_PIXELS
from .manifest import read_manifest
from .network import CrossBranchNet, NetConfig
from .pretrained import load_pretrained
from .train import Progress, TrainConfig, TrainResult, train
from .transforms import IMAGENET_STD
from .version import load_version, save_version

log = logging.getLogger(__name__)

# An untrained version has no training set to take a mean from; ImageNet's is what the
# pretrained filters expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)


def new_model(config: NetConfig, pretrained: str | Path | None = None, use_pretrained: bool = True,
              offline: bool = False):
    """A fresh network and its `init` label (`imagenet:<file>` or `random`); `pretrained` is a
    file, an http(s) URL, `none`, or None for torchvision's published weights."""
    model = CrossBranchNet(config)
    init = load_pretrained(model, pretrained, offline) if use_pretrained else "random"
    if not use_pretrained:
        log.info("init: random (no pretrained weights used)")
    return model, init


def init_version(out: str | Path, config: NetConfig, pretrained: str | Path | None = None,
                 use_pretrained: bool = True, offline: bool = False) -> dict:
    model, init = new_model(config, pretrained, use_pretrained, offline)
    return save_version(out, model, {"init": init, "pixel_mean": list(IMAGENET_MEAN),
                                     "pixel_std": list(IMAGENET_STD), "trained": False})


def train_version(manifest_path: str | Path, out: str | Path, config: NetConfig, train_config: TrainConfig,
                  init_from: str | Path | None = None, pretrained: str | Path | None = None,
                  use_pretrained: bool = True, offline: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, strict: bool = False,
                  progress: Progress | None = None, show_bar: bool = False, extra_meta: dict | None = None,
                  crossval: CrossValidation | None = None) -> dict:
    """Train on a manifest and write a version folder; returns its metadata. `extra_meta` is
    added to model.json (the backend records the parent version, snapshot and job there).
    With `crossval`, a held-out split too small to decide does not choose the epochs (model/crossval.py)."""
    if init_from:
        model, parent = load_version(init_from)
        config, init = model.config, f"version:{Path(init_from).name}"
    manifest = read_manifest(manifest_path, classes=config.classes if init_from else None)
    if not init_from:
        config = replace(config, aesthetic_classes=manifest.classes["aesthetic"],
                         emotion_classes=manifest.classes["emotion"])
        model, init = new_model(config, pretrained, use_pretrained, offline)
    data, skipped = load_training_data(manifest, train_config.train_size, max_pixels, strict)
    if len(data) < 2:
        raise AesemoError(f"{manifest.path}: {len(data)} usable image(s); training needs at least 2")
    result, crossval_report = fit(model, data, train_config, crossval, progress, show_bar)
    meta = {
        "init": init,
        # where the weights' lineage began (`random` or pretrained), through every fine-tuning
        "origin": (parent.get("origin") or parent.get("init") or "unknown") if init_from else init,
        "trained": True,
        "pixel_mean": list(result.pixel_mean),
        "pixel_std": list(IMAGENET_STD),
        "train_size": train_config.train_size,
        "crop_size": train_config.crop_size,
        "center_crop_eval": train_config.center_crop_eval,
        "metrics": with_intervals(result.metrics),
        "training": {**{k: v for k, v in result.to_meta().items() if k not in ("metrics", "pixel_mean")},
                     "config": vars(train_config), "manifest": str(manifest.path),
                     "rows": len(manifest.rows), "skipped": skipped, "crossval": crossval_report},
    }
    if init_from:
        meta["parent"] = str(init_from)
    return save_version(out, model, {**meta, **(extra_meta or {})})


def fit(model, data: TrainingData, config: TrainConfig, crossval: CrossValidation | None,
         progress: Progress | None, show_bar: bool) -> tuple[TrainResult, dict | None]:
    """Train on the manifest's named held-out split when its rows carry one (never on a held-out
    row), else on a seeded random split; with early stopping on it, unless it is too small to decide
    (`crossval`, model/crossval.py)."""
    split = named_split(data.rows, config.heldout_split)
    if split is None:
        return train(model, data, config, progress=progress, show_bar=show_bar), None
    training, heldout = split
    if len(training) < 2:
        raise AesemoError(f"{len(training)} training row(s) outside the held-out split "
                          f"{config.heldout_split!r}; training needs at least 2")
    if crossval is None or not _too_small(data, training, heldout, crossval.min_heldout):
        return train(model, data, config, progress=progress, show_bar=show_bar, split=split), None
    if not crossval.folds:
        log.info("held-out set under %d tasks per task type: every one of %d epochs trains, the last is kept",
                 crossval.min_heldout, config.epochs)
        every_epoch = TrainConfig(**{**vars(config), "patience": 0, "keep_best": False})
        result = train(model, data, every_epoch, progress=progress, show_bar=show_bar, split=split)
        held = labelled_counts(data, heldout)
        result.stopping += (f": the held-out set ({', '.join(f'{t} {n}' for t, n in held.items())} labelled tasks) "
                            f"is under {crossval.min_heldout} per task type, too few to stop early on")
        if progress:
            progress({"stage": "stopped", "stopping": result.stopping})
        return result, None
    report = choose_epochs(model, data.subset(training), config, crossval, progress)
    log.info("held-out set under %d tasks per task type: %d epochs chosen by %d-fold cross-validation",
             crossval.min_heldout, report["epochs"], report["folds"])
    final = TrainConfig(**{**vars(config), "epochs": report["epochs"], "patience": 0, "keep_best": False})
    return train(model, data, final, progress=progress, show_bar=show_bar, split=split), report


def _too_small(data: TrainingData, training, heldout, min_heldout: int) -> bool:
    """Whether some task type the training rows are labelled for has under `min_heldout`
    labelled held-out tasks."""
    trained, held = labelled_counts(data, training), labelled_counts(data, heldout)
    return any(held[task] < min_heldout for task, count in trained.items() if count)
