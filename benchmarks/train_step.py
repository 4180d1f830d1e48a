"""Seconds per training step (forward, loss, backward, SGD) per backbone and precision, in one run.

    .venv/bin/python benchmarks/train_step.py [--backbones ...] [--batch 8] [--repeats 3]
        [--modes fp32,bf16,fp32-cl,bf16-cl]

Modes: fp32, or bf16 autocast (what TrainConfig(precision="bf16") trains in), each in PyTorch's default
memory format or channels_last ("-cl"). The steps run in turns, so load from other processes
falls on all of them alike; the last column is each mode's speed-up over fp32 in the same run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import interleaved_seconds
from model.loss import two_task_loss
from model.network import CrossBranchNet, NetConfig
from model.train import pick_device

MODES = ("fp32", "bf16", "fp32-cl", "bf16-cl")


def training_step(backbone: str, mode: str, batch: int, size: int, device: torch.device):
    """A function running one SGD step of a fresh two-branch network in `mode`."""
    memory_format = torch.channels_last if mode.endswith("-cl") else torch.contiguous_format
    bf16 = mode.startswith("bf16")
    model = CrossBranchNet(NetConfig(backbone=backbone)).to(device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    target_a = torch.nn.functional.one_hot(torch.arange(batch) % 2, 2).float().to(device)
    target_e = torch.nn.functional.one_hot(torch.arange(batch) % 8, 8).float().to(device)
    mask = torch.ones(batch, device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = two_task_loss(*logits, target_a, target_e, mask, mask).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="vgg16,resnet18,mobilenet_v3_small")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; choose from {MODES}")
    print(f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, {args.size}x{args.size}")
    print(f"{'backbone':<19} {'mode':<8} {'s/step':>7} {'ms/image':>9} {'vs fp32':>8}")
    for backbone in args.backbones.split(","):
        steps = {mode: training_step(backbone, mode, args.batch, args.size, device) for mode in modes}
        seconds = interleaved_seconds(steps, args.repeats)
        reference = seconds.get("fp32")
        for mode, s in seconds.items():
            ratio = f"{reference / s:7.2f}x" if reference else "       -"
            print(f"{backbone:<19} {mode:<8} {s:7.3f} {s / args.batch * 1e3:9.1f} {ratio}", flush=True)


if __name__ == "__main__":
    main()
