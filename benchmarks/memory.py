"""Resident memory per serving process, PyTorch path vs the exported runtime, in one run.

    .venv/bin/python benchmarks/memory.py [--backbone vgg16] [--workers 2]
    .venv/bin/python benchmarks/memory.py --serve [--backbone vgg16] [--workers 2] [--threads 2]

Makes a version of the backbone with its runtime (model/runtime.py), then for each path (PyTorch,
and each OpenVINO variant whatever its agreement on this untrained network) starts `--workers`
processes that load it the way a gunicorn worker does (backend/serving/models.py's ModelCache,
or model/runtime.py's RuntimePredictor for a named variant) and predict one batch of 8, and prints
each process's RSS and PSS (proportional set size: pages shared between the processes count once
in the sum), so the sum of PSS is what the workers really cost together.

`--serve` measures the real server instead: `aesemo serve --workers N` (benchmarks/_server.py,
a temporary data directory, embedded Redis) serving the backbone's base version, /predict sent
until every worker has loaded it (the log's "predictor for" lines), then RSS and PSS of the gunicorn
master and each worker, for: the PyTorch path in the precision "auto" picks, the PyTorch path
in fp32 (weights as loaded from the safetensors file, no cast), and the OpenVINO int8 variants
(every layer int8, and with the heads in float: exported here into the version folder, `serving`
set to it whatever its agreement on this untrained network: what is measured is its memory).
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


_RUNTIME_ENV = {"AESEMO_INFERENCE_PATH": "auto", "AESEMO_PREDICTOR_PRECISION": "auto"}
SERVE_CONFIGS = {"auto": ("pytorch, auto precision", {"AESEMO_INFERENCE_PATH": "pytorch",
                                                      "AESEMO_PREDICTOR_PRECISION": "auto"}),
                 "fp32": ("pytorch, fp32", {"AESEMO_INFERENCE_PATH": "pytorch", "AESEMO_PREDICTOR_PRECISION": "fp32"}),
                 "int8": ("openvino-int8", _RUNTIME_ENV),
                 "int8-float-heads": ("openvino-int8-float-heads", _RUNTIME_ENV)}


def measure_server(args) -> None:
    import os

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _server import ImageServer, Service, child_pids, local_session, recorded_body
    from serve import photo_jpeg, predict_body

    configs = [SERVE_CONFIGS[key] for key in args.paths.split(",")]
    if configs[0][0].startswith("openvino"):
        raise SystemExit("--paths must start with a PyTorch path (auto or fp32): its first /predict makes the "
                         "base version that the OpenVINO variants are exported from")
    images = ImageServer({"/photo.jpg": (photo_jpeg(0, (640, 480)), "image/jpeg")})
    service = Service(backbone=args.backbone, workers=args.workers, threads=args.threads,
                      allowed_image_hosts=images.url.removeprefix("http://"), extra_env=dict(configs[0][1]))
    print(f"aesemo serve --workers {args.workers} --threads {args.threads}, backbone {args.backbone}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'path':<24} {'master RSS/PSS':>15} " + " ".join(f"{f'worker {i + 1} RSS/PSS':>17}" for i in range(args.workers))
          + f" {'workers PSS sum':>16}  (MiB)")
    try:
        with service:
            session = local_session()
            bodies = _fresh_bodies(predict_body([images.url + "/photo.jpg"]))
            for name, env in configs:
                if name.startswith("openvino"):
                    _export_serving(service.data_dir, name)
                if env != service.extra_env or name.startswith("openvino"):  # a worker reads runtime.json once
                    service.restart(env)
                session.post(service.url + "/setup", json=recorded_body("setup"), timeout=60).raise_for_status()
                workers = _load_in_every_worker(service, session, bodies, child_pids)
                _print_row(name, service.proc.pid, workers)
                for line in service.log_text().splitlines():
                    if "predictor for " in line:
                        print(f"    log: {line.strip()[-170:]}", flush=True)
                service.log_path.write_text("")
    finally:
        images.close()


def _fresh_bodies(template: dict):
    """/predict bodies of one task each, a new task id every time: a task predicted before is
    answered from the stored predictions without loading the model."""
    import copy
    import itertools

    for task_id in itertools.count(1000):
        body = copy.deepcopy(template)
        body["tasks"][0].update(id=task_id, inner_id=task_id)
        yield body


def _load_in_every_worker(service, session, bodies, child_pids) -> list[int]:
    """Sends /predict until the log says every worker loaded a predictor (each logs "predictor
    for <folder>" once). One worker would accept every request, so the workers that loaded (those
    whose memory grew most) are paused (SIGSTOP) during each request: another one must take it."""
    import os
    import signal

    import time

    deadline = time.monotonic() + 120
    while len(workers := sorted(child_pids(service.proc.pid))) < service.workers:  # /health needs only one
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(workers)} of {service.workers} workers started\n{service.log_tail()}")
        time.sleep(0.2)
    before = {pid: memory_kb(str(pid))["rss"] for pid in workers}
    while (loaded := service.log_text().count("predictor for ")) < len(workers):
        grown = sorted(workers, key=lambda pid: memory_kb(str(pid))["rss"] - before[pid], reverse=True)[:loaded]
        for pid in grown:
            os.kill(pid, signal.SIGSTOP)
        try:  # a new connection: a kept-alive one would go to the worker that answered last
            session.post(service.url + "/predict", json=next(bodies), timeout=600,
                         headers={"Connection": "close"}).raise_for_status()
        finally:
            for pid in grown:
                os.kill(pid, signal.SIGCONT)
    return workers


def _print_row(name: str, master: int, workers: list[int]) -> None:
    sizes = [memory_kb(str(pid)) for pid in (master, *workers)]
    cells = " ".join(f"{s['rss'] / 1024:8.0f}/{s['pss'] / 1024:<8.0f}" for s in sizes)
    print(f"{name:<24} {cells} {sum(s['pss'] for s in sizes[1:]) / 1024:16.0f}", flush=True)


def _export_serving(data_dir: Path, variant: str) -> None:
    """The base version's `variant`, recorded as serving (the benchmark measures its memory)."""
    import json

    from model import runtime
    from model.version import RUNTIME_FILE

    folder = next((data_dir / "base").glob("*/model.json")).parent
    record = runtime.export_runtime(folder, variants=(variant,))
    if "error" in record["variants"][variant]:
        raise SystemExit(f"{variant} export failed: {record['variants'][variant]['error']}")
    record.update(serving=variant, reason="set by benchmarks/memory.py --serve to measure its memory")
    (folder / RUNTIME_FILE).write_text(json.dumps(record, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help="measure `aesemo serve` itself (see the docstring)")
    parser.add_argument("--paths", default="auto,fp32,int8,int8-float-heads", help=f"with --serve: of {','.join(SERVE_CONFIGS)}")
    args = parser.parse_args()
    if args.serve:
        measure_server(args)
        return
    from model import runtime
    from model.network import NetConfig
    from model.pipeline import init_version

    with tempfile.TemporaryDirectory() as tmp:
        init_version(tmp, NetConfig(backbone=args.backbone), use_pretrained=False)
        record = runtime.export_runtime(tmp, make_all=True)
        sizes = {p.name: p.stat().st_size / 2 ** 20 for p in Path(tmp).iterdir() if p.suffix in (".bin", ".safetensors")}
        print(f"{args.backbone}: files (MiB) " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(sizes.items())))
        print(f"{args.backbone}: runtime serves {record['serving']}; {args.workers} processes per path")
        for path in ("pytorch", *(v for v, found in record["variants"].items() if "error" not in found)):
            measure(tmp, path, args.workers)


if __name__ == "__main__":
    main()
