"""What a hand-promoted version's runtime export costs, made in a child process as a serving
process makes it (model/export_process.py), and what its agreement check on generated images
costs (model/agreement_rule.py: as many images as it takes to tell 97 % from 99 %):

    .venv/bin/python benchmarks/export_check.py [--backbone resnet18] [--threshold 0.99]

Prints the export's wall time and the child's peak memory (this process's own stays where it
was), then the check's parts on this CPU: generating the images, the float32 PyTorch reference
on them, and the served (or first) variant on them, for the rule's count and for 32 images.
The version is random (no download), so which variant passes says nothing; the times do.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss_mib() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def timed(work, *args, **kwargs):
    started = time.perf_counter()
    result = work(*args, **kwargs)
    return result, time.perf_counter() - started


def check_costs(folder: Path, record: dict, counts: list[int]) -> list[str]:
    """Seconds for each part of the agreement check, on `counts` generated images."""
    from model import runtime
    from model.version import load_version
    model, meta = load_version(folder)
    graph = runtime.ProbabilityGraph(model, meta)
    crop = int(meta.get("crop_size", 224))
    variant = next((name for name in runtime.VARIANTS if "files" in record["variants"].get(name, {})), None)
    compiled = runtime._compile(folder / f"{variant}.xml") if variant else None
    lines = []
    for count in counts:
        images, made_s = timed(runtime.generated_images, count, crop, seed=2)
        _, reference_s = timed(runtime._reference, graph, images)
        run_s = timed(runtime._run_batches, compiled, images)[1] if compiled else float("nan")
        lines.append(f"  {count:4d} images: generated {made_s:5.2f} s, float32 PyTorch reference {reference_s:6.2f} s, "
                     f"{variant or 'no variant'} on them {run_s:5.2f} s; per variant checked "
                     f"{reference_s + run_s + made_s:6.2f} s with the reference once")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--threshold", type=float, default=0.99)
    args = parser.parse_args()
    import torch

    from model import runtime
    from model.agreement_rule import agreement_rule
    from model.export_process import export_in_child
    from model.network import NetConfig
    from model.pipeline import init_version

    rule = agreement_rule(args.threshold)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
          f"{args.backbone} (random weights), threshold {args.threshold}: {rule.describe()}")
    with tempfile.TemporaryDirectory(prefix="aesemo-bench-export-") as tmp:
        folder = Path(tmp) / "v"
        init_version(folder, NetConfig(backbone=args.backbone), use_pretrained=False)
        before = rss_mib()
        record, export_s = timed(export_in_child, folder, runtime.export_runtime, threshold=args.threshold)
        child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"export in a child process: {export_s:.1f} s wall; the child's peak RSS {child_peak:.0f} MiB; "
              f"this process {before:.0f} MiB before, {rss_mib():.0f} MiB after")
        print(f"  checked on {record['images']['held_out']}; serving {record['serving']}: {record['reason'][:300]}")
        for line in check_costs(folder, record, sorted({32, rule.images})):
            print(line)


if __name__ == "__main__":
    main()
