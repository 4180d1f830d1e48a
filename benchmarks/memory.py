"""Resident memory per serving process, PyTorch path vs the exported runtime, in one run.

    .venv/bin/python benchmarks/memory.py [--backbone vgg16] [--workers 2]

Makes a version of the backbone with its runtime (model/runtime.py), then for each path (PyTorch,
and each OpenVINO variant whatever its agreement on this untrained network) starts `--workers`
processes that load it the way a gunicorn worker does (backend/serving/models.py's ModelCache,
or model/runtime.py's RuntimePredictor for a named variant) and predict one batch of 8, and prints each process's RSS and PSS (proportional set
size: pages shared between the processes count once in the sum), so the sum of PSS is what
the workers really cost together.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def memory_kb(pid: str = "self") -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return {"rss": fields["Rss"], "pss": fields["Pss"]}


def worker(folder: str, path: str, loaded, release) -> None:
    import torch

    from backend.serving.models import ModelCache
    from backend.serving.registry import VersionRef
    from model.runtime import generated_images

    torch.set_num_threads(1)
    if path == "pytorch":
        predictor = ModelCache(10 ** 8, path).load(VersionRef("v", Path(folder))).predictor
    else:
        from model.runtime import RuntimePredictor, read_runtime
        predictor = RuntimePredictor(folder, read_runtime(folder), variant=path)
    predictor.predict_tensors(generated_images(8, predictor.crop_size))
    loaded.put(getattr(predictor, "path", "pytorch"))
    release.wait()


def measure(folder: str, path: str, workers: int) -> None:
    context = multiprocessing.get_context("spawn")
    loaded, release = context.Queue(), context.Event()
    processes = [context.Process(target=worker, args=(folder, path, loaded, release)) for _ in range(workers)]
    for process in processes:
        process.start()
    served = [loaded.get(timeout=1800) for _ in processes]
    sizes = [memory_kb(str(p.pid)) for p in processes]
    release.set()
    for process in processes:
        process.join()
    rss = " ".join(f"{s['rss'] / 1024:7.0f}" for s in sizes)
    print(f"  {path:<14} serves {served[0]:<14} RSS per process (MiB): {rss} | "
          f"sum of PSS {sum(s['pss'] for s in sizes) / 1024:7.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from model import runtime
    from model.network import NetConfig
    from model.pipeline import init_version

    with tempfile.TemporaryDirectory() as tmp:
        init_version(tmp, NetConfig(backbone=args.backbone), use_pretrained=False)
        record = runtime.export_runtime(tmp)
        sizes = {p.name: p.stat().st_size / 2 ** 20 for p in Path(tmp).iterdir() if p.suffix in (".bin", ".safetensors")}
        print(f"{args.backbone}: files (MiB) " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(sizes.items())))
        print(f"{args.backbone}: runtime serves {record['serving']}; {args.workers} processes per path")
        for path in ("pytorch", *(v for v, found in record["variants"].items() if "error" not in found)):
            measure(tmp, path, args.workers)


if __name__ == "__main__":
    main()
