"""The training job's whole path, timed end to end, beside one plain `aesemo train` of the same
network on the same images in the same run (benchmarks/learning.py --timing-job).

The job runs as in production: `/setup` and three agreeing votes per task through the Flask app
(its test client), the 96 generated 256x256 PNGs downloaded from an image server on 127.0.0.1,
`POST /projects/1/train`, then `aesemo worker --burst` in a subprocess, which resyncs nothing,
snapshots, fetches the images, trains, writes the version and its report, applies the promotion
rule and makes the promoted version's CPU runtime. The start is the benchmark's pretrained source
model, registered as the deployment's base model (AESEMO_BASE_MODEL). "Queue to promoted" is the
job's record from enqueued to ended (the worker's start included, as it starts after the POST); the
burst worker then also runs the prediction refresh that the promotion queued, which its CPU
seconds include.

The plain run is `aesemo train` on the job's own manifest from the same start (its own seeded 20 %
held-out split, early stopping), in a subprocess too. Both versions are then scored on the same
generated test images, which neither trained on.
"""
from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import SCRUB_ENV, ImageServer, aesemo_executable, recorded_body, webhook_body

from model.classes import DEFAULT_CLASSES, TASKS
from model.dataset import TrainingData
from model.pipeline import IMAGENET_MEAN
from model.transforms import IMAGENET_STD
from model.version import load_version, save_version

ROOT = Path(__file__).resolve().parent.parent
LABEL_CONFIG = (ROOT / "label_config" / "aesthetic_emotion.xml").read_text(encoding="utf-8")
PROJECT = "1.1"    # Label Studio's "<id>.<created timestamp>": project 1
TODAY_S = 327.0    # the job's path before: 6 cross-validation folds, then the final network


def _png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _labels(data: TrainingData, i: int) -> tuple[str, str]:
    return tuple(DEFAULT_CLASSES[t][int(data.targets[t][i].argmax())] for t in TASKS)


def _base_version(start, folder: Path) -> Path:
    """The source model as a version folder: trained (on the source task), no labels counted."""
    save_version(folder, start, {"init": "benchmark source model", "origin": "benchmark source model",
                                 "trained": True, "pixel_mean": list(IMAGENET_MEAN), "pixel_std": list(IMAGENET_STD)})
    return folder


def _queue_votes(client, data: TrainingData, url: str) -> None:
    answer = client.post("/setup", json={"project": PROJECT, "schema": LABEL_CONFIG})
    assert answer.status_code == 200, answer.json
    template, annotation = recorded_body("webhook_ANNOTATION_CREATED"), 0
    for task in range(1, len(data) + 1):
        aesthetic, emotion = _labels(data, task - 1)
        for user in (2, 3, 4):
            annotation += 1
            body = webhook_body(template, annotation, task, user, aesthetic, emotion, f"{url}/img/{task}.png")
            assert client.post("/webhook", json=body).status_code == 200


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(command: list[str], env: dict, cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds, CPU seconds (the subprocess's, all its threads) and the finished process."""
    started, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, _children_cpu() - cpu, done


def end_to_end(start, data: TrainingData, test: TrainingData, scores, settings_env: dict | None = None) -> dict:
    """Seconds and test accuracies of the job's whole path and of a plain `aesemo train`.
    `scores(model, pixel_mean)` gives a model's test metrics; `settings_env` (AESEMO_* variables)
    applies to both runs (the defaults otherwise: the product's)."""
    from backend.core.redis_connection import ensure_embedded_redis, stop_embedded_redis
    from backend.core.settings import Settings
    from backend.http.app import create_app
    tmp = Path(tempfile.mkdtemp(prefix="aesemo-bench-job-"))
    data_dir, images = tmp / "data", None
    try:
        base = _base_version(start, tmp / "source-version")
        images = ImageServer({f"/img/{i + 1}.png": (_png(data.images[i]), "image/png") for i in range(len(data))})
        url = ensure_embedded_redis(data_dir)
        settings = Settings(data_dir=data_dir, backbone="resnet18", redis_url=url, base_model=base,
                            allowed_image_hosts=(images.host,), resync_before_snapshot=False)
        client = create_app(settings).test_client()
        _queue_votes(client, data, images.url)
        env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV and not k.startswith("AESEMO_")}
        env.update(AESEMO_DATA_DIR=str(data_dir), REDIS_URL=url, AESEMO_BACKBONE="resnet18", AESEMO_OFFLINE="1",
                   AESEMO_BASE_MODEL=str(base), AESEMO_RESYNC_BEFORE_SNAPSHOT="false",
                   AESEMO_ALLOWED_IMAGE_HOSTS=images.host, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
                   # the code of this checkout, also where the `aesemo` command is installed from another
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                   **(settings_env or {}))
        started = time.perf_counter()
        answer = client.post("/projects/1/train")
        assert answer.status_code == 202, answer.json
        _, job_cpu, worker = _run([aesemo_executable(), "worker", "--burst"], env, tmp)
        worker_s = time.perf_counter() - started
        job = client.get(f"/projects/1/jobs/{answer.json['job_id']}").json
        # queue to promoted: the job's own record, not the worker's exit, since a burst worker
        # goes on to run the prediction refresh the promotion queued
        job_s = (datetime.fromisoformat(job["ended_at"]) - datetime.fromisoformat(job["enqueued_at"])).total_seconds()
        result = job.get("result") or {}
        if job.get("status") != "finished" or not result.get("promoted"):
            raise RuntimeError(f"the job did not promote a version: {json.dumps(job)[:2000]}\n{worker.stderr[-3000:]}")
        version = data_dir / "projects" / "1" / "versions" / result["version"]
        manifest = json.loads((version / "model.json").read_text())["training"]["manifest"]
        plain_s, plain_cpu, _ = _run([aesemo_executable(), "train", manifest, "--out", str(tmp / "plain"), "--init-from",
                           str(base), "--quiet", *_train_flags(env)], env, tmp)
        return {"job_s": job_s, "worker_s": worker_s, "plain_s": plain_s, "job_cpu": job_cpu, "plain_cpu": plain_cpu,
                "stages": result.get("stages", []),
                "stopping": result.get("stopping"), "job": _scored(version, scores),
                "plain": _scored(tmp / "plain", scores)}
    finally:
        if images is not None:
            images.close()
        stop_embedded_redis(data_dir)
        shutil.rmtree(tmp, ignore_errors=True)


def _train_flags(env: dict) -> list[str]:
    """`aesemo train`'s flags for the settings the job reads from the environment."""
    flags = {"AESEMO_TRAIN_EPOCHS": "--epochs", "AESEMO_TRAIN_IMAGE_SIZE": "--train-size",
             "AESEMO_TRAIN_CROP_SIZE": "--crop-size", "AESEMO_TRAIN_LR": "--lr", "AESEMO_TRAIN_PATIENCE": "--patience"}
    return [part for name, flag in flags.items() if name in env for part in (flag, env[name])]


def _scored(folder: Path, scores) -> dict:
    model, meta = load_version(folder)
    metrics = scores(model, meta["pixel_mean"])
    return {t: metrics[t]["accuracy"] for t in TASKS}


def report(figures: dict) -> None:
    """The end-to-end table: today's figure, the job's, the plain run's and their ratio."""
    job, plain = figures["job"], figures["plain"]

    def mean(accuracies: dict) -> float:
        return sum(accuracies.values()) / len(accuracies)
    print("\nThe job's whole path (queue to promoted version, worker start included) and a plain "
          "`aesemo train` of the same start on the job's manifest, in the same run:")
    threads = torch.get_num_threads()
    print(f"\n| path | seconds | x plain | CPU s / {threads} threads | x plain | aesthetic acc | emotion acc | mean |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| job before (6 CV folds, then the final network; 2026-11-29) | {TODAY_S:.0f} | 4.7 (issue's run) "
          "| - | - | 0.92 (seed 0) | 0.98 (seed 0) | - |")
    for name, key in (("job now, queue to promoted", "job"), ("`aesemo train`", "plain")):
        print(f"| {name} | {figures[key + '_s']:.1f} | {figures[key + '_s'] / figures['plain_s']:.2f} | "
              f"{figures[key + '_cpu'] / threads:.1f} | {figures[key + '_cpu'] / figures['plain_cpu']:.2f} | "
              f"{figures[key]['aesthetic']:.2f} | {figures[key]['emotion']:.2f} | {mean(figures[key]):.3f} |")
    print(f"\nthe worker process, start to exit (the prediction refresh after the promotion included, and in "
          f"its CPU seconds): {figures['worker_s']:.1f} s")
    stages = ", ".join(f"{s['name']} {s['seconds']:.1f} s" for s in figures["stages"])
    print(f"\njob stages: {stages}; training: {figures['stopping']}")
    print(f"test accuracy, job minus plain (mean of both tasks): {mean(job) - mean(plain):+.3f} (goal >= -0.05); "
          f"time ratio {figures['job_s'] / figures['plain_s']:.2f} (goal <= 2.5; "
          f"{figures['job_cpu'] / figures['plain_cpu']:.2f} in CPU time)", flush=True)
