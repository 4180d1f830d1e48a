"""Inference speed per backbone: default fp32 eager vs the Predictor's path, in one run.

    .venv/bin/python benchmarks/inference.py [--backbones vgg16,resnet18] [--repeats 3]

Prints ms per image at batch 1 and 8, the ratio (default / Predictor) and achieved GFLOP/s.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import flops_per_image, interleaved_seconds  # noqa: E402
from model.network import NetConfig  # noqa: E402
from model.pipeline import init_version  # noqa: E402
from model.predictor import Predictor, cpu_has_native_bf16  # noqa: E402
from model.transforms import normalize  # noqa: E402
from model.version import load_version  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="vgg16,resnet18,mobilenet_v3_small")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native CPU bf16: {cpu_has_native_bf16()}")
    for backbone in args.backbones.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            init_version(tmp, NetConfig(backbone=backbone), use_pretrained=False)
            default_model, meta = load_version(tmp)
            default_model.eval()
            predictor = Predictor(tmp)
            flops = flops_per_image(default_model)
            for batch in map(int, args.batches.split(",")):
                images = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)

                def default_path():
                    with torch.no_grad():
                        default_model(normalize(images, meta["pixel_mean"]))

                seconds = interleaved_seconds({"default": default_path,
                                               "predictor": lambda: predictor.predict_tensors(images)},
                                              args.repeats)
                d, p = (seconds[k] / batch for k in ("default", "predictor"))
                print(f"{backbone:<19} batch {batch}: default fp32 {d * 1e3:8.1f} ms/image "
                      f"({flops / d / 1e9:6.1f} GFLOP/s) | predictor ({str(predictor.dtype)[6:]}) "
                      f"{p * 1e3:8.1f} ms/image ({flops / p / 1e9:6.1f} GFLOP/s) | ratio {d / p:4.2f}x "
                      f"| {flops / 1e9:.1f} GFLOP/image")


if __name__ == "__main__":
    main()
