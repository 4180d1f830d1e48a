"""How the training job's rule for a small held-out set compares with the alternatives, on the
generated images of benchmarks/learning.py (one process, the same data and start for every path):

    .venv/bin/python benchmarks/job_epochs.py [--size 96 --crop 80] [--seeds 0,1,2]
        [--paths plain,folds,stop,every] [--start pretrained|random]

- plain: `train()` as `aesemo train` runs it (a seeded random 20 % held-out split, early stopping);
- folds: the job before: epochs chosen by 3-fold x 2 cross-validation on the training rows, then
  the final network for that many epochs (`CrossValidation(folds=3)`);
- stop: early stopping on the job's held-out split (19 of the 96 tasks);
- every: the job now: every epoch on the training rows, the last kept (`CrossValidation()`).

One JSON line per run: seconds, training images, epochs run and kept, the folds' best epochs, test
accuracies on 192 generated images never trained on, and the held-out score per epoch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning import generated_set, pretrained_start, test_metrics

from model.crossval import FOLDS, CrossValidation
from model.heldout import HELDOUT_SPLIT
from model.network import CrossBranchNet, NetConfig
from model.pipeline import fit
from model.train import TrainConfig, split_indices, train


def one_path(path: str, model, data, config: TrainConfig):
    """The result, and the cross-validation report when the path has one."""
    marked = set(split_indices(len(data), config.val_fraction, config.seed)[1].tolist())
    job_data = replace(data, rows=[replace(r, split=HELDOUT_SPLIT if i in marked else None)
                                   for i, r in enumerate(data.rows)])
    job_config = replace(config, heldout_split=HELDOUT_SPLIT)
    if path == "plain":
        return train(model, data, config), None
    if path == "stop":
        return train(model, job_data, job_config), None
    return fit(model, job_data, job_config, CrossValidation(folds=FOLDS if path == "folds" else 0), None, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--crop", type=int, default=80)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--paths", default="plain,folds,stop,every")
    parser.add_argument("--start", choices=("pretrained", "random"), default="pretrained")
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / ".learning")
    args = parser.parse_args()
    data = generated_set("target", 96, args.size, seed=1)
    test = generated_set("target", 192, args.size, seed=2)
    # the source model of learning.py's curves (the same key, so its cached file is reused)
    source = argparse.Namespace(backbone="resnet18", source_images=640, source_epochs=6, lr=0.01)
    start = pretrained_start({}, TrainConfig(train_size=96, crop_size=80, lr=0.01), source, args.work).state_dict() \
        if args.start == "pretrained" else None
    for seed in [int(s) for s in args.seeds.split(",")]:
        for path in args.paths.split(","):
            torch.manual_seed(seed)
            model = CrossBranchNet(NetConfig(backbone="resnet18"))
            if start is not None:
                model.load_state_dict(start)
            config = TrainConfig(train_size=args.size, crop_size=args.crop, seed=seed)
            started = time.monotonic()
            result, report = one_path(path, model, data, config)
            metrics = test_metrics(model, test, result.pixel_mean, args.crop)
            print(json.dumps({"seed": seed, "path": path, "seconds": round(time.monotonic() - started, 1),
                              "trained_on": result.train_size, "kept": result.best_epoch, "ran": result.epochs_run,
                              "fold_best_epochs": report and report["best_epochs"],
                              "aesthetic": round(metrics["aesthetic"]["accuracy"], 3),
                              "emotion": round(metrics["emotion"]["accuracy"], 3),
                              "scores": [round(h["score"], 3) for h in result.history]}), flush=True)


if __name__ == "__main__":
    main()
