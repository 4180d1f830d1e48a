"""GPU figures in one run: training step speed and memory in fp32 and bf16, inference speed and
bf16/fp32 agreement, and a real `train_version` run on generated images (data path included).

    python benchmarks/gpu.py [--backbones vgg16,resnet18] [--batch 32]

Needs a CUDA device; prints one line per measurement so a run cut short still tells something.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.loss import two_task_loss
from model.network import CrossBranchNet, NetConfig
from model.pipeline import init_version
from model.predictor import Predictor
from model.synthetic import write_synthetic_set
from model import train as train_module
from model.dataset import load_training_data
from model.manifest import read_manifest
from model.train import TrainConfig


def cuda_seconds(run, repeats: int, warmup: int = 3) -> float:
    """Median seconds per call, timed with CUDA events after warm-up calls."""
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def train_steps(backbone: str, batch: int, repeats: int) -> None:
    device = torch.device("cuda")
    for mode in ("fp32", "bf16 autocast", "bf16 autocast + channels_last"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        channels_last = "channels_last" in mode
        model = CrossBranchNet(NetConfig(backbone=backbone)).to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        images = torch.randn(batch, 3, 224, 224, device=device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target_a = torch.nn.functional.one_hot(torch.arange(batch, device=device) % 2, 2).float()
        target_e = torch.nn.functional.one_hot(torch.arange(batch, device=device) % 8, 8).float()
        mask = torch.ones(batch, device=device)
        bf16 = mode.startswith("bf16")

        def step(model=model, images=images, optimizer=optimizer, target_a=target_a, target_e=target_e,
                 mask=mask, bf16=bf16):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                logits = model(images)
            loss = two_task_loss(*logits, target_a, target_e, mask, mask).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        seconds = cuda_seconds(step, repeats)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"train step  {backbone:<19} batch {batch:3d} {mode:<30} {seconds * 1e3:8.1f} ms/step "
              f"{batch / seconds:8.0f} images/s  peak {peak:5.2f} GiB", flush=True)
        del step, model, optimizer, images  # step holds them too, as its default arguments


def inference(backbone: str, batch: int, repeats: int, workdir: Path) -> None:
    folder = workdir / f"base-{backbone}"
    init_version(folder, NetConfig(backbone=backbone), use_pretrained=False)
    images = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)
    outputs = {}
    for precision in ("fp32", "bf16"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        predictor = Predictor(folder, device="cuda", precision=precision)
        seconds = cuda_seconds(lambda predictor=predictor: predictor.predict_tensors(images), repeats)
        peak = torch.cuda.max_memory_allocated() / 2**30
        outputs[precision] = predictor.predict_tensors(images)
        print(f"inference   {backbone:<19} batch {batch:3d} {precision:<30} {seconds * 1e3:8.1f} ms/batch "
              f"{batch / seconds:8.0f} images/s  peak {peak:5.2f} GiB (uint8 batch from host memory included)",
              flush=True)
        del predictor
    diff = max(float((outputs["fp32"][t] - outputs["bf16"][t]).abs().max()) for t in outputs["fp32"])
    agree = min(float((outputs["fp32"][t].argmax(1) == outputs["bf16"][t].argmax(1)).float().mean())
                for t in outputs["fp32"])
    print(f"inference   {backbone:<19} bf16 vs fp32: max probability difference {diff:.4f}, "
          f"same top class on {agree:.1%} of images", flush=True)


def real_training(backbone: str, images: int, epochs: int, batch: int, workdir: Path) -> None:
    """model.train.train on decoded generated images; epoch 1 (cuDNN warm-up) is left out of the rate."""
    manifest = read_manifest(write_synthetic_set(workdir / "synthetic", images, seed=1, size=96))
    data, _ = load_training_data(manifest)
    runs = {"bf16, images in host memory": (True, False), "bf16, images resident on the GPU": (True, True),
            "fp32, images resident on the GPU": (False, True)}
    for name, (bf16, resident) in runs.items():
        ends = []
        progress = (lambda event, ends=ends: ends.append(time.perf_counter()) if event["stage"] == "evaluated" else None)
        original = train_module._resident
        if not resident:
            train_module._resident = lambda data, device: data
        try:
            model = CrossBranchNet(NetConfig(backbone=backbone))
            config = TrainConfig(epochs=epochs, batch_size=batch, patience=0, lr=0.01,
                                 precision="bf16" if bf16 else "fp32")
            result = train_module.train(model, data, config, progress=progress)
        finally:
            train_module._resident = original
        steady = (ends[-1] - ends[0]) / (len(ends) - 1)
        print(f"train loop  {backbone:<19} batch {batch:3d} {name:<34} {result.train_size / steady:6.0f} train "
              f"images/s per epoch after the first ({steady:.2f} s/epoch incl. held-out evaluation of "
              f"{result.val_size}); held-out aesthetic acc {result.metrics['aesthetic']['accuracy']:.2f}", flush=True)
        del model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="vgg16,resnet18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--train-images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device")
    props = torch.cuda.get_device_properties(0)
    print(f"torch {torch.__version__}, {props.name}, {props.total_memory / 2**30:.0f} GiB, "
          f"bf16 supported: {torch.cuda.is_bf16_supported()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for backbone in args.backbones.split(","):
            train_steps(backbone, args.batch, args.repeats)
        for backbone in args.backbones.split(","):
            inference(backbone, 64, args.repeats, workdir)
        real_training(args.backbones.split(",")[0], args.train_images, args.epochs, args.batch, workdir)


if __name__ == "__main__":
    main()
