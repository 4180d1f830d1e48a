"""Class balance on skewed labels (issue 14): test macro-F1 per task after training on
generated images whose emotion classes are skewed (half of them the first class), with class
balance off, as loss weights, and as balanced sampling. The test set is balanced. One run.

    nice -n 5 .venv/bin/python benchmarks/balance.py [--train 128 --test 96 --size 48 --crop 40 --epochs 4]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.classes import TASKS  # noqa: E402
from model.metrics import task_metrics  # noqa: E402
from model.network import CrossBranchNet, NetConfig  # noqa: E402
from model.synthetic import generated_training_data  # noqa: E402
from model.train import TrainConfig, eval_view, train  # noqa: E402
from model.transforms import IMAGENET_STD, normalize  # noqa: E402

SKEW = [0.5] + [0.5 / 7] * 7


@torch.no_grad()
def test_metrics(model, data, mean, crop: int) -> dict[str, dict]:
    model.eval()
    images = normalize(eval_view(data.images, crop, center_crop=False), mean, IMAGENET_STD)
    outputs = [model(images[i:i + 32]) for i in range(0, len(data), 32)]
    return {task: task_metrics(torch.cat([o[k] for o in outputs]).softmax(1), data.targets[task], data.masks[task])
            for k, task in enumerate(TASKS)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=128)
    parser.add_argument("--test", type=int, default=96)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--crop", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    train_data = generated_training_data(args.train, seed=1, size=args.size, emotion_share=SKEW)
    test_data = generated_training_data(args.test, seed=2, size=args.size)
    print(f"{args.train} training images (emotion: half the first class), {args.test} balanced test images, "
          f"{args.size} px, crop {args.crop}, {args.epochs} epochs, lr {args.lr}; test scores, mean over {args.seeds} seed(s)")
    print("| class_balance | aesthetic acc | emotion acc | emotion macro-F1 |\n|---|---|---|---|")
    for balance in ("off", "loss", "sampling"):
        scores = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            model = CrossBranchNet(NetConfig(backbone="resnet18", head="linear"))
            config = TrainConfig(epochs=args.epochs, lr=args.lr, seed=seed, train_size=args.size,
                                 crop_size=args.crop, device="cpu", class_balance=balance)
            result = train(model, train_data, config)
            scores.append(test_metrics(model, test_data, result.pixel_mean, args.crop))
        mean = lambda task, key: sum(s[task][key] for s in scores) / len(scores)  # noqa: E731
        print(f"| {balance} | {mean('aesthetic', 'accuracy'):.2f} | {mean('emotion', 'accuracy'):.2f} | "
              f"{mean('emotion', 'macro_f1'):.2f} |", flush=True)


if __name__ == "__main__":
    main()
