"""Inference speed and agreement per backbone and path, in one run.

    .venv/bin/python benchmarks/inference.py [--backbones vgg16,resnet18] [--repeats 3] [--agreement-images 200]

Paths: torch fp32 eager (default), today's Predictor (fp32, or bf16 on a CPU with native bf16),
and each OpenVINO variant model/runtime.py exports (float32, int8 calibrated by NNCF on
generated images). Prints ms per image at batch 1 and 8, achieved GFLOP/s and its share of this
CPU's matrix-multiply ceiling (float32 for the float paths, int8 for int8), the speed-up over
today's Predictor, and each path's top-1 agreement per task and largest probability difference
against torch fp32 on generated images. Times are interleaved (A, B, A, B...) so other load on
the machine falls on every path alike; compare ratios within one run.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import flops_per_image, interleaved_seconds  # noqa: E402
from model import runtime  # noqa: E402
from model.network import NetConfig  # noqa: E402
from model.pipeline import init_version  # noqa: E402
from model.predictor import Predictor, cpu_has_native_bf16  # noqa: E402
from model.runtime import ProbabilityGraph, agreement, generated_images  # noqa: E402
from model.version import load_version  # noqa: E402


def matmul_ceiling(size: int = 1024, repeats: int = 5) -> dict[str, float]:
    """This CPU's float32 (GFLOP/s) and int8 (GOP/s, torch._int_mm) matrix-multiply throughput."""
    ops = 2 * size ** 3
    result = {}
    for name, dtype in (("fp32", torch.float32), ("int8", torch.int8)):
        a = torch.randint(-100, 100, (size, size)).to(dtype)
        b = torch.randint(-100, 100, (size, size)).to(dtype)
        multiply = (lambda: a @ b) if dtype == torch.float32 else (lambda: torch._int_mm(a, b))
        multiply()
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            multiply()
            best = min(best, time.perf_counter() - started)
        result[name] = ops / best / 1e9
    return result


def paths_of(folder: str, record: dict) -> dict:
    """name -> (predict(uint8 batch) -> {task: probabilities}, precision for the ceiling)."""
    model, meta = load_version(folder)
    graph = ProbabilityGraph(model, meta)
    predictor = Predictor(folder)

    def default(images):
        with torch.no_grad():
            return dict(zip(("aesthetic", "emotion"), graph(images)))

    paths = {"torch fp32": (default, "fp32"),
             f"predictor {str(predictor.dtype)[6:]}": (predictor.predict_tensors, "fp32")}
    for variant, found in record["variants"].items():
        if "error" in found:
            print(f"  {variant}: export failed: {found['error']}")
            continue
        loaded = runtime.RuntimePredictor(folder, record, variant=variant)
        paths[variant] = (loaded.predict_tensors, "int8" if variant == runtime.INT8 else "fp32")
    return paths


def agreements(paths: dict, count: int, size: int) -> dict[str, dict]:
    images = generated_images(count, size, seed=3)
    outputs = {name: [run(images[i:i + 8]) for i in range(0, count, 8)] for name, (run, _) in paths.items()}
    joined = {name: {task: torch.cat([part[task] for part in parts]) for task in ("aesthetic", "emotion")}
              for name, parts in outputs.items()}
    return {name: agreement(joined[name], joined["torch fp32"]) for name in paths}


def bench_backbone(backbone: str, batches: list[int], repeats: int, count: int, ceiling: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        init_version(tmp, NetConfig(backbone=backbone), use_pretrained=False)
        started = time.perf_counter()
        record = runtime.export_runtime(tmp)
        print(f"{backbone}: export + calibration + agreement check {time.perf_counter() - started:.0f} s; "
              f"serving {record['serving']} ({record['reason']})")
        paths = paths_of(tmp, record)
        flops = flops_per_image(load_version(tmp)[0].eval())
        agreed = agreements(paths, count, 224)
        for batch in batches:
            images = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)
            seconds = interleaved_seconds({name: (lambda run=run: run(images)) for name, (run, _) in paths.items()},
                                          repeats)
            baseline = next(v for k, v in seconds.items() if k.startswith("predictor"))
            for name, (_, precision) in paths.items():
                per_image = seconds[name] / batch
                rate = flops / per_image / 1e9
                found = agreed[name]
                print(f"{backbone:<19} batch {batch} {name:<16} {per_image * 1e3:8.1f} ms/image "
                      f"{rate:7.1f} GFLOP/s ({rate / ceiling[precision]:5.1%} of {precision} ceiling) "
                      f"| {baseline / seconds[name]:5.2f}x predictor "
                      f"| top-1 agreement A {found['top1']['aesthetic']:.3f} E {found['top1']['emotion']:.3f} "
                      f"max prob diff {found['max_prob_diff']:.4f} | {flops / 1e9:.1f} GFLOP/image")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="vgg16,resnet18,mobilenet_v3_small")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--agreement-images", type=int, default=200)
    args = parser.parse_args()
    import openvino
    ceiling = matmul_ceiling()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, openvino {openvino.__version__}, "
          f"{torch.get_num_threads()} threads, native CPU bf16: {cpu_has_native_bf16()}")
    print(f"matmul ceiling: fp32 {ceiling['fp32']:.1f} GFLOP/s, int8 {ceiling['int8']:.1f} GOP/s (torch._int_mm)")
    for backbone in args.backbones.split(","):
        bench_backbone(backbone, [int(b) for b in args.batches.split(",")], args.repeats,
                       args.agreement_images, ceiling)


if __name__ == "__main__":
    main()
