"""Seconds per training step (forward, loss, backward, SGD) per backbone, in one run.

    .venv/bin/python benchmarks/train_step.py [--backbones ...] [--batch 8] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import interleaved_seconds  # noqa: E402
from model.loss import two_task_loss  # noqa: E402
from model.network import CrossBranchNet, NetConfig  # noqa: E402
from model.train import pick_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="vgg16,resnet18,mobilenet_v3_small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    print(f"torch {torch.__version__} on {device}{' with bf16 autocast' if bf16 else ' in fp32'}, "
          f"batch {args.batch}, {args.size}x{args.size}")
    steps = {}
    for backbone in args.backbones.split(","):
        model = CrossBranchNet(NetConfig(backbone=backbone)).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        images = torch.randn(args.batch, 3, args.size, args.size, device=device)
        target_a = torch.nn.functional.one_hot(torch.arange(args.batch) % 2, 2).float().to(device)
        target_e = torch.nn.functional.one_hot(torch.arange(args.batch) % 8, 8).float().to(device)
        mask = torch.ones(args.batch, device=device)

        def step(model=model, optimizer=optimizer, images=images, target_a=target_a, target_e=target_e):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(images)
            loss = two_task_loss(*logits, target_a, target_e, mask, mask).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        steps[backbone] = step
    seconds = interleaved_seconds(steps, args.repeats)
    for backbone, s in seconds.items():
        print(f"{backbone:<19} {s:7.3f} s/step  {s / args.batch * 1e3:8.1f} ms/image")


if __name__ == "__main__":
    main()
