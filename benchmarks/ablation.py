"""What slows learning: test accuracy per task after training on generated images
(emotion = background hue, aesthetic = sharp vs blurred), for two independent torchvision
resnet18s trained plainly (the baseline), our CrossBranchNet with the old defaults, and runs
that change one factor at a time between them. One table, measured in one run.

    nice -n 5 .venv/bin/python benchmarks/ablation.py [--train 160 --test 96 --size 128 --crop 112 --epochs 4]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torchvision import models

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.classes import TASKS
from model.metrics import task_metrics
from model.network import CrossBranchNet, NetConfig
from model.synthetic import generated_training_data
from model.train import TrainConfig, eval_view, train
from model.transforms import IMAGENET_STD, normalize


class TwoResnets(nn.Module):
    """The issue's baseline: one plain torchvision resnet18 per task, nothing shared."""

    def __init__(self, num_a: int = 2, num_e: int = 8):
        super().__init__()
        self.net_a = models.resnet18(weights=None, num_classes=num_a)
        self.net_e = models.resnet18(weights=None, num_classes=num_e)

    def forward(self, images):
        return self.net_a(images), self.net_e(images)


# the baseline's loop: no held-out split, no early stopping, constant lr, no weight decay
PLAIN = {"val_fraction": 0.0, "patience": 0, "schedule": "constant", "weight_decay": 0.0}
OLD_NET = {"backbone": "resnet18", "head": "fc3", "cross_init": "identity"}
OLD_LOOP = {"val_fraction": 0.2, "patience": 3, "schedule": "cosine", "weight_decay": 5e-4}

# name -> (network: None for the baseline, else NetConfig fields; TrainConfig fields)
RUNS = {
    "baseline: 2 torchvision resnet18, plain loop": (None, PLAIN),
    "ours, old defaults": (OLD_NET, OLD_LOOP),
    "old net, plain loop": (OLD_NET, PLAIN),
    "old loop, linear head": ({**OLD_NET, "head": "linear"}, OLD_LOOP),
    "old loop, no cross-branch": ({**OLD_NET, "cross_branch": False}, OLD_LOOP),
    "old loop, random cross init": ({**OLD_NET, "cross_init": "random"}, OLD_LOOP),
    "old loop, constant lr": (OLD_NET, {**OLD_LOOP, "schedule": "constant"}),
    "old loop, no held-out/early stop": (OLD_NET, {**OLD_LOOP, "val_fraction": 0.0, "patience": 0}),
    "old loop, no weight decay": (OLD_NET, {**OLD_LOOP, "weight_decay": 0.0}),
    "old loop, lambda 1": (OLD_NET, {**OLD_LOOP, "lam": 1.0}),
    "plain loop, linear head, no cross-branch": ({**OLD_NET, "head": "linear", "cross_branch": False}, PLAIN),
    "new defaults": ({"backbone": "resnet18"}, {}),
}


@torch.no_grad()
def test_scores(model, data, mean, crop: int) -> dict[str, dict]:
    """Per task: accuracy and macro-F1 on `data`, images prepared as at inference."""
    model.eval()
    images = normalize(eval_view(data.images, crop, center_crop=False), mean, IMAGENET_STD)
    outputs = [model(images[i:i + 32]) for i in range(0, len(data), 32)]
    return {task: task_metrics(torch.cat([o[k] for o in outputs]).softmax(1), data.targets[task], data.masks[task])
            for k, task in enumerate(TASKS)}


def size_arguments(parser: argparse.ArgumentParser) -> None:
    """The data and training sizes both benchmarks take."""
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--test", type=int, default=96)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=1)


def one_run(net_fields, loop_fields, train_data, test_data, args, seed: int):
    torch.manual_seed(seed)
    model = TwoResnets() if net_fields is None else CrossBranchNet(NetConfig(**net_fields))
    config = TrainConfig(**{"epochs": args.epochs, "batch_size": 16, "lr": args.lr, "seed": seed,
                            "train_size": args.size, "crop_size": args.crop, "device": "cpu", **loop_fields})
    started = time.monotonic()
    result = train(model, train_data, config)
    scores = test_scores(model, test_data, result.pixel_mean, args.crop)
    return {task: scores[task]["accuracy"] for task in TASKS}, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    size_arguments(parser)
    parser.add_argument("--runs", default="", help="run names separated by ; (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    train_data = generated_training_data(args.train, seed=1, size=args.size)
    test_data = generated_training_data(args.test, seed=2, size=args.size)   # a disjoint seed
    chosen = [name.strip() for name in args.runs.split(";") if name.strip()] or list(RUNS)
    print(f"{args.train} training / {args.test} test images, {args.size} px, crop {args.crop}, "
          f"{args.epochs} epochs, lr {args.lr}, batch 16, {args.seeds} seed(s); test accuracy (mean over seeds)")
    print("| run | aesthetic | emotion | s/run |\n|---|---|---|---|")
    for name in chosen:
        net_fields, loop_fields = RUNS[name]
        results = [one_run(net_fields, loop_fields, train_data, test_data, args, seed) for seed in range(args.seeds)]
        mean = {task: sum(r[0][task] for r in results) / len(results) for task in TASKS}
        seconds = sum(r[1] for r in results) / len(results)
        print(f"| {name} | {mean['aesthetic']:.2f} | {mean['emotion']:.2f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
