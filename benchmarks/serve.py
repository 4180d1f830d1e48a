"""The real service over HTTP (`aesemo serve`, gunicorn, 1 worker x 8 threads), in one run:

    .venv/bin/python benchmarks/serve.py [--backbone resnet18] [--repeats 8] [--rate 200] [--seconds 10]

(a) /predict at 16 tasks per request against the bare Predictor on the same version folder and
    the same decoded images, per image, timed in turns (goal: ratio <= 1.25x);
(b) /health p50/p99 over sequential requests (goal: p99 < 10 ms);
(c) /webhook (ANNOTATION_CREATED) paced at a fixed rate, open loop (goal: p99 < 20 ms).

Images come from a ThreadingHTTPServer on 127.0.0.1; the server, its embedded Redis and the
image server stop at the end, on errors too.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend.core import keys
from _common import interleaved_seconds
from _server import (CLIENTS, ImageServer, Service, local_session, paced_open_loop, percentile,
                     recorded_body, webhook_body)

AESTHETIC = ["high", "low"]
EMOTION = ["amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"]


def photo_jpeg(seed: int, size: tuple[int, int]) -> bytes:
    """A photo-like JPEG: sky-to-ground gradient, blurred shapes, sensor noise (quality 90)."""
    rng = np.random.default_rng(seed)
    w, h = size
    top, bottom = rng.uniform(40, 230, 3), rng.uniform(20, 200, 3)
    ramp = np.linspace(0, 1, h)[:, None, None]
    pixels = top * (1 - ramp) + bottom * ramp + np.zeros((h, w, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = int(rng.integers(0, w)), int(rng.integers(h // 3, h))
        r = int(rng.integers(w // 40, w // 6))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x - r, y - r, x + r, y + r // 2), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(2))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (h, w, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def predict_body(urls: list[str]) -> dict:
    body = recorded_body("predict")
    template = body["tasks"][0]
    tasks = []
    for i, url in enumerate(urls):
        task = copy.deepcopy(template)
        task.update(id=i + 1, inner_id=i + 1)
        task["data"] = {"image": url}
        tasks.append(task)
    body["tasks"] = tasks
    return body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--images", type=int, default=16, help="tasks per /predict request")
    parser.add_argument("--image-size", default="1024x768")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--health", type=int, default=500)
    parser.add_argument("--rate", type=float, default=200.0, help="webhook requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=8, help="webhook client threads")
    parser.add_argument("--client", choices=CLIENTS, default="socket",
                        help="the webhook senders' HTTP client (see _server.Poster; socket is the leanest)")
    parser.add_argument("--parts", default="abc", help="which of (a) /predict, (b) /health, (c) /webhook to run")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.image_size.split("x"))

    photos = {f"/photos/{i}.jpg": photo_jpeg(i, size) for i in range(args.images)}
    images = ImageServer({path: (data, "image/jpeg") for path, data in photos.items()})
    try:
        host = images.url.removeprefix("http://")
        with Service(backbone=args.backbone, workers=1, threads=8, allowed_image_hosts=host) as service:
            run(args, service, images, photos, size)
    finally:
        images.close()


def run(args, service: Service, images: ImageServer, photos: dict[str, bytes], size) -> None:
    import torch

    from model.images import open_image
    from model.predictor import Predictor

    session = local_session()
    mean_kb = sum(map(len, photos.values())) / len(photos) / 1024
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at start (other jobs share this machine)")
    print(f"server: aesemo serve --workers 1 --threads 8, backbone {args.backbone}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads here); {len(photos)} JPEG photos {size[0]}x{size[1]}, "
          f"{mean_kb:.0f} KB each, from {images.url}")
    setup = session.post(service.url + "/setup", json=recorded_body("setup"), timeout=30)
    setup.raise_for_status()
    print(f"/setup -> {setup.json()}")

    if "a" in args.parts:
        # (a) /predict vs the bare Predictor
        body = json.dumps(predict_body([images.url + path for path in photos])).encode()

        def http_predict():
            r = session.post(service.url + "/predict", data=body, headers={"Content-Type": "application/json"},
                             timeout=300)
            r.raise_for_status()
            return r.json()

        started = time.perf_counter()
        first = http_predict()  # downloads the images, writes the base version, loads the model
        cold = time.perf_counter() - started
        results = first["results"]
        if len(results) != len(photos) or any(not r for r in results) or first.get("errors"):
            raise SystemExit(f"/predict did not predict every task: {json.dumps(first)[:2000]}")
        fetched_cold = images.hits
        http_predict()  # images from the disk cache from here on
        version = first["model_version"]
        folder = service.data_dir / "base" / version
        predictor = Predictor(folder)
        decoded = [open_image(data, name="content") for data in photos.values()]
        n = len(decoded)

        # The server predicts on one of gunicorn's threads, not on a main thread; so does the bare
        # path here (on this machine a main thread measured slower than other threads under load).
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare-predictor")

        def bare():
            worker.submit(predictor.predict_images, decoded, 16).result()

        def decode_only():
            [open_image(data, name="content") for data in photos.values()]

        hits_before = images.hits
        seconds = interleaved_seconds({"http": http_predict, "bare": bare, "decode": decode_only}, args.repeats)
        fetched_timed = images.hits - hits_before
        worker.shutdown()
        http, plain, decode = (seconds[k] / n * 1e3 for k in ("http", "bare", "decode"))
        print(f"(a) /predict first request (cold: {fetched_cold} image downloads, base version written, model "
              f"loaded): {cold:.2f} s")
        print(f"(a) /predict {n} tasks/request over HTTP: {http:.1f} ms/image | bare Predictor "
              f"({str(predictor.dtype)[6:]}, {version}) predict_images on decoded images (one worker thread): "
              f"{plain:.1f} ms/image | "
              f"ratio {http / plain:.2f}x (goal <= 1.25x) | median of {args.repeats}, in turns")
        print(f"(a) images during the timed requests: {fetched_timed} downloads from the image server (all "
              f"{n * (args.repeats + 1)} read from the backend's disk cache, then decoded); JPEG decode alone "
              f"{decode:.1f} ms/image, i.e. bare + decode = {plain + decode:.1f} ms/image, HTTP overhead beyond "
              f"that {http - plain - decode:+.1f} ms/image")

    if "b" in args.parts:
        # (b) /health, sequential
        for _ in range(20):
            session.get(service.url + "/health", timeout=5)
        health = []
        deadline = time.monotonic() + 60
        cpu_before = service.cpu()
        for _ in range(args.health):
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            r = session.get(service.url + "/health", timeout=5)
            health.append(time.perf_counter() - started)
            r.raise_for_status()
        cpu = service.cpu()
        health_cpu = (cpu["workers"] + cpu["master"] - cpu_before["workers"] - cpu_before["master"]) / len(health)
        print(f"(b) /health x{len(health)} sequential: p50 {percentile(health, 50) * 1e3:.2f} ms, "
              f"p99 {percentile(health, 99) * 1e3:.2f} ms, max {max(health) * 1e3:.2f} ms (goal p99 < 10 ms) | "
              f"server CPU {health_cpu * 1e3:.2f} ms per request (HTTP parsing, Flask, metrics, access log)")

    if "c" in args.parts:
        # (c) /webhook, paced open loop
        template = recorded_body("webhook_ANNOTATION_CREATED")
        rng = random.Random(0)
        total = int(args.rate * args.seconds)
        bodies = [json.dumps(webhook_body(template, annotation=10_000 + i, task=1 + rng.randrange(500),
                                          user=1 + rng.randrange(20), aesthetic=rng.choice(AESTHETIC),
                                          emotion=rng.choice(EMOTION),
                                          image_url=f"{images.url}/photos/{i % len(photos)}.jpg")).encode()
                  for i in range(total + 40)]
        warm, bodies = bodies[:40], bodies[40:]
        for b in warm:
            session.post(service.url + "/webhook", data=b, headers={"Content-Type": "application/json"},
                         timeout=10).raise_for_status()
        cpu_before = service.cpu()
        out = paced_open_loop(service.url + "/webhook", bodies, args.rate, args.senders, args.seconds + 60, args.client)
        cpu = {k: v - cpu_before[k] for k, v in service.cpu().items()}
        lat, srv = out["latencies"], out["service"]
        print(f"(c) /webhook ANNOTATION_CREATED ({len(bodies[0])} B bodies) paced at {args.rate:.0f}/s for "
              f"{args.seconds:.0f} s, {args.senders} sender threads ({args.client}), open loop: "
              f"achieved {out['sent'] / out['elapsed']:.0f}/s "
              f"({out['sent']} sent), latency from due time p50 {percentile(lat, 50) * 1e3:.1f} ms, "
              f"p99 {percentile(lat, 99) * 1e3:.1f} ms, max {max(lat, default=float('nan')) * 1e3:.1f} ms "
              f"(goal p99 < 20 ms); service time alone p50 {percentile(srv, 50) * 1e3:.1f} ms, "
              f"p99 {percentile(srv, 99) * 1e3:.1f} ms; sent late by > 5 ms: {sum(late > 0.005 for late in out['late'])}; "
              f"errors {len(out['errors'])}{' ' + repr(out['errors'][:3]) if out['errors'] else ''}")
        server_ms = (cpu["workers"] + cpu["master"]) / max(out["sent"], 1) * 1e3
        redis_ms = cpu["redis"] / max(out["sent"], 1) * 1e3
        client_ms = out["client_cpu"] / max(out["sent"], 1) * 1e3
        print(f"(c) CPU per webhook (less load-sensitive than wall time): server worker {server_ms:.2f} ms + redis-server "
              f"{redis_ms:.2f} ms (+ client {client_ms:.2f} ms); so one worker process (one GIL) tops out near "
              f"{1e3 / server_ms:.0f}/s at this CPU cost")
        stored = service.redis().hlen(keys.votes("1"))
        expected = len(warm) + len(bodies) - len(out["errors"])
        print(f"(c) votes stored in Redis for project 1: {stored} (expected {expected})")
    session.close()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
