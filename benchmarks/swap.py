"""Hot swap and the training image cache, over the real service, in one run:

    .venv/bin/python benchmarks/swap.py [--backbones resnet18,vgg16] [--skip-training]

(a) per backbone: time from POST /projects/1/versions/<v>/promote to the first /predict answer
    carrying <v> (1 task per request), median and max of --repeats swaps (goal for resnet18: < 2 s);
(b) resnet18: --swaps promotions while --clients clients send /predict back to back: failed
    requests (non-200 answers and exceptions; goal 0), requests served, per-request p50/p99, and
    promotion -> first answer carrying the new version; then that median against (a)'s quiet one,
    measured on the same server in the same run (goal: at most 2x);
(c) data-loading time (result["images"]["seconds"]) of a second training job on the same images
    against the first (the training image cache; goal >= 5x faster), images served with an
    artificial per-request latency so the first run resembles a real download.

`aesemo serve --workers 1 --threads 8` runs as a subprocess on 127.0.0.1 with its own temporary
data directory and embedded Redis; images come from a ThreadingHTTPServer on 127.0.0.1. Servers,
workers and Redis stop at the end, on errors too. Every loop is bounded in count and in time.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import (SCRUB_ENV, ImageServer, Service, aesemo_executable, local_session, percentile,
                     recorded_body, webhook_body)

ROOT = Path(__file__).resolve().parent.parent
LABEL_CONFIG = (ROOT / "label_config" / "aesthetic_emotion.xml").read_text(encoding="utf-8")
PROJECT = "1.1"  # Label Studio's "<id>.<created timestamp>": project 1
JSON = {"Content-Type": "application/json"}


def photo_jpeg(seed: int, size=(640, 480)) -> bytes:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def predict_body(url: str) -> bytes:
    body = recorded_body("predict")
    task = copy.deepcopy(body["tasks"][0])
    task["data"] = {"image": url}
    body.update(tasks=[task], project=PROJECT, label_config=LABEL_CONFIG)
    return json.dumps(body).encode()


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms"


# -- (a) ------------------------------------------------------------------------------------

def make_versions(service: Service, backbone: str, names: list[str]) -> tuple[float, float]:
    """Untrained versions of `backbone` in the project's versions folder; (seconds, MB each)."""
    from backend.serving.registry import project_versions_dir
    from backend.core.settings import Settings
    from model.network import NetConfig
    from model.pipeline import init_version
    folder = project_versions_dir(Settings(data_dir=service.data_dir), "1")
    logging.getLogger("model.pipeline").setLevel(logging.ERROR)  # its "init: random" warning, per version
    started = time.perf_counter()
    for name in names:
        init_version(folder / name, NetConfig(backbone=backbone), use_pretrained=False)
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in (folder / names[0]).iterdir() if f.is_file()) / 2**20
    return seconds, size


def load_breakdown(service: Service, name: str) -> tuple[float, float, float]:
    """Seconds for Predictor(folder), for building the network alone, for hashing the weights."""
    from backend.serving.registry import project_versions_dir
    from backend.core.settings import Settings
    from model.network import CrossBranchNet, NetConfig
    from model.predictor import Predictor
    from model.version import WEIGHTS_FILE, read_meta, sha256_file
    folder = project_versions_dir(Settings(data_dir=service.data_dir), "1") / name
    meta = read_meta(folder)
    started = time.perf_counter()
    predictor = Predictor(folder)
    load_s = time.perf_counter() - started
    del predictor
    started = time.perf_counter()
    network = CrossBranchNet(NetConfig.from_dict(meta["architecture"]))
    build_s = time.perf_counter() - started
    del network
    started = time.perf_counter()
    sha256_file(folder / meta.get("weights_file", WEIGHTS_FILE))
    return load_s, build_s, time.perf_counter() - started


def promote(session, service: Service, name: str, timeout: float) -> float:
    started = time.perf_counter()
    r = session.post(f"{service.url}/projects/1/versions/{name}/promote", timeout=timeout)
    if r.status_code != 200:
        raise RuntimeError(f"promote {name}: {r.status_code} {r.text[:500]}")
    return time.perf_counter() - started


def swap_latency(session, service: Service, name: str, body: bytes, deadline_s: float) -> dict:
    """Promote `name`, then /predict one task at a time until an answer carries it."""
    started = time.perf_counter()
    promote_s = promote(session, service, name, timeout=deadline_s)
    old, errors = 0, []
    stop_at = time.monotonic() + deadline_s
    for _ in range(100_000):
        if time.monotonic() > stop_at:
            raise RuntimeError(f"no /predict answer carried {name} within {deadline_s:.0f} s "
                               f"({old} old answers, errors {errors[:3]})\n{service.log_tail()}")
        try:
            r = session.post(service.url + "/predict", data=body, headers=JSON, timeout=deadline_s)
        except requests.RequestException as exc:
            errors.append(type(exc).__name__)
            continue
        if r.status_code != 200:
            errors.append(f"{r.status_code} {r.text[:200]}")
            continue
        if r.json().get("model_version") == name:
            return {"seconds": time.perf_counter() - started, "promote": promote_s, "old": old, "errors": errors}
        old += 1
    raise RuntimeError("poll loop ran out")


def run_a(args, service: Service, backbone: str, urls: list[str]) -> tuple[list[str], list[float]]:
    names = [f"{backbone}-a", f"{backbone}-b"]
    made_s, size_mb = make_versions(service, backbone, names)
    session = local_session()
    body = predict_body(urls[0])
    slow = backbone.startswith("vgg")
    deadline = 300.0 if slow else 60.0
    setup = session.post(service.url + "/setup", json={"project": PROJECT, "schema": LABEL_CONFIG}, timeout=30)
    setup.raise_for_status()
    # first version current before any model is loaded (no base version written), then a warm-up
    promote(session, service, names[0], timeout=deadline)
    started = time.perf_counter()
    warm = session.post(service.url + "/predict", data=body, headers=JSON, timeout=deadline)
    warm_s = time.perf_counter() - started
    if warm.status_code != 200 or warm.json().get("model_version") != names[0]:
        raise RuntimeError(f"warm-up /predict: {warm.status_code} {warm.text[:500]}")
    loads_before = service.log_text().count("predictor for ")
    runs = []
    for i in range(args.repeats):
        target = names[(i + 1) % 2]
        runs.append(swap_latency(session, service, target, body, deadline))
        time.sleep(0.5)
    session.close()
    loads = service.log_text().count("predictor for ") - loads_before
    seconds = [r["seconds"] for r in runs]
    goal = " (goal < 2 s)" if backbone == "resnet18" else ""
    print(f"(a) {backbone}: promotion -> first /predict carrying the new version: median "
          f"{statistics.median(seconds):.2f} s, max {max(seconds):.2f} s over {len(runs)} swaps{goal} "
          f"[{', '.join(f'{s:.2f}' for s in seconds)}]")
    print(f"(a) {backbone}: of which the promote request itself (it loads the version to check it): median "
          f"{statistics.median(r['promote'] for r in runs):.2f} s; /predict answers on the old version while "
          f"waiting: {sum(r['old'] for r in runs)}; failed polls: {sum(len(r['errors']) for r in runs)}"
          f"{' ' + repr([e for r in runs for e in r['errors']][:3]) if any(r['errors'] for r in runs) else ''}; "
          f"models loaded by the server: {loads} for {len(runs)} promotions")
    load_s, build_s, hash_s = load_breakdown(service, names[0])
    print(f"(a) {backbone}: the same load in this process: Predictor(version) {load_s:.2f} s, of which the weights' "
          f"sha256 {hash_s:.2f} s (the promote request loads once more to check the version); for comparison, "
          f"building the network with random weights, which loading skips: {build_s:.2f} s")
    print(f"(a) {backbone}: versions {size_mb:.0f} MB each on disk ({len(names)} written in {made_s:.1f} s); "
          f"warm-up /predict (loads the first version): {warm_s:.2f} s")
    return names, seconds


# -- (b) ------------------------------------------------------------------------------------

def run_b(args, service: Service, names: list[str], urls: list[str]) -> list[float]:
    bodies = [predict_body(u) for u in urls]
    lock, stop = threading.Lock(), threading.Event()
    latencies, failures, versions, seen = [], [], {}, []
    hard_stop = time.monotonic() + 900

    def client(k: int):
        session = local_session()
        try:
            for i in range(1_000_000):
                if stop.is_set() or time.monotonic() > hard_stop:
                    return
                started = time.perf_counter()
                try:
                    r = session.post(service.url + "/predict", data=bodies[(k + i) % len(bodies)], headers=JSON,
                                     timeout=60)
                    version = r.json().get("model_version") if r.status_code == 200 else None
                except (requests.RequestException, ValueError) as exc:
                    with lock:
                        failures.append(type(exc).__name__)
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        latencies.append(elapsed)
                        versions[version] = versions.get(version, 0) + 1
                        seen.append((time.perf_counter(), version))
        finally:
            session.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.clients)]
    control = local_session()
    current = control.get(service.url + "/projects/1/versions", timeout=30).json()["current"]
    swap_times = []
    started = time.perf_counter()
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        for i in range(args.swaps):
            target = names[1] if current == names[0] else names[0]
            promoted_at = time.perf_counter()
            promote(control, service, target, timeout=120)
            deadline = time.monotonic() + 120
            arrived = None
            while arrived is None and time.monotonic() < deadline:
                with lock:
                    arrived = next((at for at, v in reversed(seen) if v == target and at > promoted_at), None)
                time.sleep(0.02)
            if arrived is None:
                print(f"(b) swap {i + 1}: no answer carried {target} within 120 s")
            else:
                swap_times.append(arrived - promoted_at)
            current = target
            time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=90)
        control.close()
    wall = time.perf_counter() - started
    unfinished = sum(t.is_alive() for t in threads)
    served = len(latencies)
    print(f"(b) {args.swaps} swaps ({' / '.join(names)}, resnet18) under {args.clients} concurrent /predict "
          f"clients (1 task each, back to back) for {wall:.1f} s: failed requests {len(failures)} (goal 0)"
          f"{' ' + repr(failures[:3]) if failures else ''}; served {served} ({served / wall:.1f}/s), "
          f"per request p50 {ms(percentile(latencies, 50))}, p99 {ms(percentile(latencies, 99))}, "
          f"max {ms(max(latencies, default=float('nan')))}"
          f"{f'; clients still running: {unfinished}' if unfinished else ''}")
    print(f"(b) answers per version {versions}; promotion -> first answer on the new version under load: "
          f"median {statistics.median(swap_times):.2f} s, max {max(swap_times):.2f} s" if swap_times else
          f"(b) answers per version {versions}")
    return swap_times


def print_ratio(quiet: list[float], loaded: list[float], clients: int) -> None:
    """The swap under load against the quiet swap, both from this run."""
    if not (quiet and loaded):
        return
    ratio = statistics.median(loaded) / statistics.median(quiet)
    print(f"swap: promotion -> first answer on the new version, quiet median {statistics.median(quiet):.2f} s "
          f"(max {max(quiet):.2f}), under {clients} clients median {statistics.median(loaded):.2f} s "
          f"(max {max(loaded):.2f}): {ratio:.2f}x the quiet figure (goal <= 2x)")


# -- (c) ------------------------------------------------------------------------------------

def run_c(args) -> None:
    from backend.http.app import create_app
    from backend.core.redis_connection import ensure_embedded_redis, stop_embedded_redis
    from backend.core.settings import Settings
    from model.synthetic import write_synthetic_set

    tmp = Path(tempfile.mkdtemp(prefix="aesemo-bench-train-"))
    data = tmp / "data"
    images = None
    try:
        manifest = write_synthetic_set(tmp / "imgs", args.images, seed=1, size=args.image_px)
        rows = [json.loads(line) for line in manifest.read_text().splitlines()[1:]]
        images = ImageServer({f"/imgs/{r['image']}": ((tmp / "imgs" / r["image"]).read_bytes(), "image/png")
                              for r in rows}, latency_s=args.latency_ms / 1000)
        url = ensure_embedded_redis(data)
        settings = Settings(data_dir=data, backbone="resnet18", redis_url=url, allowed_image_hosts=(images.host,),
                            min_training_labels=5, resync_before_snapshot=False, train_epochs=1,
                            train_image_size=40, train_crop_size=35)
        client = create_app(settings).test_client()
        r = client.post("/setup", json={"project": PROJECT, "schema": LABEL_CONFIG})
        assert r.status_code == 200, r.json
        template = recorded_body("webhook_ANNOTATION_CREATED")
        annotation = 0
        for task, row in enumerate(rows, start=1):
            for user in (2, 3, 4):
                annotation += 1
                body = webhook_body(template, annotation, task, user, row["aesthetic"], row["emotion"],
                                    f"{images.url}/imgs/{row['image']}")
                r = client.post("/webhook", json=body)
                assert r.status_code == 200, r.json
        env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV and not k.startswith("AESEMO_")}
        env.update(AESEMO_DATA_DIR=str(data), REDIS_URL=url, AESEMO_BACKBONE="resnet18", AESEMO_OFFLINE="1",
                   AESEMO_TRAIN_EPOCHS="1", AESEMO_TRAIN_IMAGE_SIZE="40", AESEMO_TRAIN_CROP_SIZE="35",
                   AESEMO_MIN_TRAINING_LABELS="5", AESEMO_RESYNC_BEFORE_SNAPSHOT="false",
                   AESEMO_ALLOWED_IMAGE_HOSTS=images.host, NO_PROXY="127.0.0.1,localhost",
                   no_proxy="127.0.0.1,localhost")
        results = []
        for run in (1, 2):
            r = client.post("/projects/1/train")
            assert r.status_code == 202, (r.status_code, r.json)
            job_id = r.json["job_id"]
            hits = images.hits
            started = time.perf_counter()
            worker = subprocess.run([aesemo_executable(), "worker", "--burst"], env=env, cwd=tmp,
                                    stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
            wall = time.perf_counter() - started
            job = client.get(f"/projects/1/jobs/{job_id}").json
            if worker.returncode != 0 or job.get("status") != "finished":
                raise RuntimeError(f"training run {run}: worker exit {worker.returncode}, job {json.dumps(job)[:1500]}"
                                   f"\n{worker.stderr[-3000:]}")
            result = job["result"]
            results.append({"seconds": result["images"]["seconds"], "used": result["images"]["used"],
                            "failed": result["images"]["failed"], "downloads": images.hits - hits, "wall": wall,
                            "training": result["training_seconds"]})
        first, second = results
        print(f"(c) training image loading, {first['used']} images ({args.image_px}x{args.image_px} PNG, "
              f"{args.latency_ms:.0f} ms added per download): first run {first['seconds']:.3f} s "
              f"({first['downloads']} downloads), second run {second['seconds']:.3f} s ({second['downloads']} "
              f"downloads) | {first['seconds'] / max(second['seconds'], 1e-6):.0f}x faster (goal >= 5x)")
        print(f"(c) whole worker runs (process start, 1 epoch, evaluation, version written): "
              f"{first['wall']:.1f} s and {second['wall']:.1f} s; training alone {first['training']:.1f} s and "
              f"{second['training']:.1f} s; failed images {first['failed']} and {second['failed']}")
    finally:
        if images is not None:
            images.close()
        stop_embedded_redis(data)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="resnet18,vgg16")
    parser.add_argument("--repeats", type=int, default=5, help="timed promotions per backbone")
    parser.add_argument("--swaps", type=int, default=5, help="promotions under load (b)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent /predict clients (b)")
    parser.add_argument("--skip-training", action="store_true", help="skip (c)")
    parser.add_argument("--images", type=int, default=32, help="training images (c)")
    parser.add_argument("--image-px", type=int, default=128, help="side of the training images (c)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added per image download (c)")
    args = parser.parse_args()
    import torch
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; aesemo serve --workers 1 --threads 8, "
          f"AESEMO_SWAP_POLL=5, project {PROJECT}")

    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    photos = {f"/photos/{i}.jpg": (photo_jpeg(i), "image/jpeg") for i in range(8)}
    images = ImageServer(photos)
    urls = [images.url + path for path in photos]
    try:
        for backbone in backbones:
            with Service(extra_env={"AESEMO_SWAP_POLL": "5"}, backbone=backbone, workers=1, threads=8,
                             allowed_image_hosts=images.host) as service:
                names, quiet = run_a(args, service, backbone, urls)
                if backbone == "resnet18":
                    print_ratio(quiet, run_b(args, service, names, urls), args.clients)
                errors = [line for line in service.log_text().splitlines() if "Traceback" in line or "ERROR" in line]
                if errors:
                    print(f"server log ({backbone}): {len(errors)} error lines, first: {errors[0][:300]}")
        if "resnet18" not in backbones:
            print("(b) skipped: it runs on resnet18 (add it to --backbones)")
    finally:
        images.close()
    if args.skip_training:
        print("(c) skipped (--skip-training)")
    else:
        run_c(args)


if __name__ == "__main__":
    main()
