"""Class balance on skewed labels: test macro-F1 per task after training on
generated images whose emotion classes are skewed (half of them the first class), with class
balance off, as loss weights, and as balanced sampling. The test set is balanced. One run.

    nice -n 5 .venv/bin/python benchmarks/balance.py [--train 160 --test 96 --size 128 --crop 112 --epochs 4]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation import size_arguments, test_scores

from model.network import CrossBranchNet, NetConfig
from model.synthetic import generated_training_data
from model.train import TrainConfig, train

SKEW = [0.5] + [0.5 / 7] * 7


def main() -> None:
    parser = argparse.ArgumentParser()
    size_arguments(parser)
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
            scores.append(test_scores(model, test_data, result.pixel_mean, args.crop))
        mean = lambda task, key, scores=scores: sum(s[task][key] for s in scores) / len(scores)
        print(f"| {balance} | {mean('aesthetic', 'accuracy'):.2f} | {mean('emotion', 'accuracy'):.2f} | "
              f"{mean('emotion', 'macro_f1'):.2f} |", flush=True)


if __name__ == "__main__":
    main()
