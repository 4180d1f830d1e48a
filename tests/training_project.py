"""Shared pieces of the training-job and hot-swap tests: the environment a real `aesemo`
subprocess (worker, serve, the command line) runs with, a labelled project built from recorded
Label Studio webhook bodies, small model versions written straight to disk, and process helpers.

Everything stays on 127.0.0.1 and uses a real redis-server (conftest's embedded one).
"""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
from ls_examples import example

AESTHETIC = ("high", "low")
EMOTION = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")
SMALL_TRAINING = {"size": 40, "crop": 35}



def aesemo_command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("aesemo")
    return [str(script), *args] if script.is_file() else [sys.executable, "-m", "backend.cli", *args]


def service_env(data_dir: Path, redis_url: str, image_hosts: str, **extra: str) -> dict:
    """The environment of an `aesemo` subprocess: this repository's settings for a small, quick
    model, and no stray AESEMO_* / Label Studio variables from the caller's shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AESEMO_") and k not in ("REDIS_URL", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")}
    env.update({
        "AESEMO_DATA_DIR": str(data_dir),
        "REDIS_URL": redis_url,
        "AESEMO_BACKBONE": "resnet18",
        "AESEMO_SUGGEST_UNTRAINED": "1",  # predictions with the base version before any training
        "AESEMO_SUGGESTION_GATE": "0",    # tests/test_suggestions.py tests the gate; small test versions fail it
        "AESEMO_CONTROL_FRACTION": "0",   # tests/test_suggestions.py tests control tasks
        "AESEMO_OFFLINE": "1",  # no test reaches the internet for ImageNet weights
        "AESEMO_INFERENCE_PATH": "pytorch",  # no background runtime exports; tests/test_runtime.py tests them
        "AESEMO_ALLOWED_IMAGE_HOSTS": image_hosts,
        "AESEMO_MIN_TRAINING_LABELS": "5",
        "AESEMO_TRAIN_EPOCHS": "1",
        "AESEMO_TRAIN_IMAGE_SIZE": str(SMALL_TRAINING["size"]),
        "AESEMO_TRAIN_CROP_SIZE": str(SMALL_TRAINING["crop"]),
        "AESEMO_TRAIN_LR": "0.02",
        "AESEMO_TRAIN_DEVICE": "cpu",
        "AESEMO_RESYNC_BEFORE_SNAPSHOT": "false",
        "AESEMO_JOB_HEARTBEAT": "1",
        # a loaded 2-core machine: several OpenMP threads per process slow torch down many times
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


@contextmanager
def environment(env: dict):
    """os.environ replaced by `env` for the block (load_settings() reads it)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_for(env: dict):
    from backend.core.settings import load_settings
    with environment(env):
        return load_settings()


def service_client(data_dir: Path, redis_url: str, image_hosts: str, **extra: str):
    """(env, settings, Flask test client) of an in-process service with service_env's settings."""
    from backend.http.app import create_app
    env = service_env(data_dir, redis_url, image_hosts, **extra)
    settings = settings_for(env)
    return env, settings, create_app(settings).test_client()


# ----- a labelled project -------------------------------------------------------------------

def setup_project(client, project: int, hostname: str = "http://127.0.0.1:9") -> None:
    body = copy.deepcopy(example("setup.json"))
    body["project"] = f"{project}.1795782039"
    body["hostname"] = hostname
    response = client.post("/setup", json=body)
    assert response.status_code == 200, response.get_json()


def setup_answer(client, project: int) -> str:
    """The model version /setup answers for the project (the recorded body, this project's id)."""
    body = copy.deepcopy(example("setup.json"))
    body["project"] = f"{project}.1795782039"
    body["hostname"] = "http://127.0.0.1:9"
    response = client.post("/setup", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["model_version"]


def label_tasks(client, project: int, urls: dict[int, str], users=(2, 3, 4), first_annotation: int = 1) -> int:
    """Three agreeing votes per task through ANNOTATION_CREATED webhooks; task t gets
    aesthetic AESTHETIC[t % 2] and emotion EMOTION[t % 8]. Returns the next annotation id."""
    template = example("webhook_ANNOTATION_CREATED.json")
    annotation_id = first_annotation
    for task, url in urls.items():
        for user in users:
            body = copy.deepcopy(template)
            body["project"]["id"] = project
            body["annotation"].update(id=annotation_id, completed_by=user, task=task, project=project,
                                      updated_at="2026-11-27T12:00:00Z")
            body["task"].update(id=task, project=project, data={"image": url})
            body["annotation"]["result"][0]["value"]["choices"] = [AESTHETIC[task % 2]]
            body["annotation"]["result"][1]["value"]["choices"] = [EMOTION[task % 8]]
            response = client.post("/webhook", json=body)
            assert response.status_code == 200, response.get_json()
            annotation_id += 1
    return annotation_id


def start_training_body(project: int) -> dict:
    body = copy.deepcopy(example("webhook_START_TRAINING.json"))
    body["project"]["id"] = project
    return body


def legacy_train_body(project: int) -> dict:
    body = copy.deepcopy(example("train.json"))
    body["project"] = f"{project}.1795782039"
    return body


def predict_body(project: int, urls: list[str], label_config: str | None = None) -> dict:
    body = copy.deepcopy(example("predict.json"))
    template = body["tasks"][0]
    tasks = []
    for i, url in enumerate(urls, 1):
        task = copy.deepcopy(template)
        task["id"] = task["inner_id"] = i
        task["data"] = {"image": url}
        tasks.append(task)
    body["tasks"] = tasks
    body["project"] = f"{project}.1795782039"
    if label_config is not None:
        body["label_config"] = label_config
    return body


# ----- versions without a worker --------------------------------------------------------------

def write_small_version(folder: Path, seed: int, classes: dict | None = None, **meta) -> dict:
    """A loadable version that is quick to load and predict with on a CPU: a resnet18 network
    cut after its second stage with narrow FC layers (15 MB of weights instead of 100), at the
    small training size, freshly initialised (`seed` makes its weights differ) and saved the way
    a trained one is."""
    import torch

    from model.network import CrossBranchNet, NetConfig
    from model.pipeline import IMAGENET_MEAN
    from model.transforms import IMAGENET_STD
    from model.version import save_version

    classes = classes or {"aesthetic": AESTHETIC, "emotion": EMOTION}
    torch.manual_seed(seed)
    model = CrossBranchNet(NetConfig(backbone="resnet18", num_groups=2, fc_width=64,
                                     aesthetic_classes=tuple(classes["aesthetic"]),
                                     emotion_classes=tuple(classes["emotion"])))
    return save_version(folder, model, {"init": "random", "trained": True, "pixel_mean": list(IMAGENET_MEAN),
                                        "pixel_std": list(IMAGENET_STD), "train_size": SMALL_TRAINING["size"],
                                        "crop_size": SMALL_TRAINING["crop"], "metrics": {}, **meta})


def report_metrics(accuracy: float) -> dict:
    """Held-out metrics with confusion matrices for both tasks, as a trained version carries."""
    return {"aesthetic": {"accuracy": accuracy, "macro_f1": accuracy - 0.05, "confusion": [[3, 1], [0, 4]]},
            "emotion": {"accuracy": accuracy / 2, "macro_f1": accuracy / 3,
                        "confusion": [[1 if i == j else 0 for j in range(8)] for i in range(8)]}}


def write_reported_version(folder: Path, accuracy: float, created_at: str, **meta) -> None:
    """A small version with held-out metrics and its report (metrics.json, confusion PNGs)."""
    from backend.training.report import write_report
    saved = write_small_version(folder, seed=len(folder.name), metrics=report_metrics(accuracy),
                                created_at=created_at, **meta)
    write_report(folder, {**saved, "metrics": report_metrics(accuracy)})


def flip_a_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ----- processes ----------------------------------------------------------------------------

def start_process(args: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:  # the child holds its own descriptor
        process = subprocess.Popen(args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    process.log_path = log_path  # type: ignore[attr-defined]
    return process


def stop_process(process: subprocess.Popen, timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """`sig` to the process group (gunicorn's workers too), SIGKILL if it lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    else:  # its children (if any) may still be around
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def log_tail(process: subprocess.Popen, chars: int = 4000) -> str:
    path = getattr(process, "log_path", None)
    return path.read_text(errors="replace")[-chars:] if path and path.is_file() else ""


def run_burst_worker(env: dict, log_path: Path, timeout: float = 480.0) -> subprocess.CompletedProcess:
    with open(log_path, "ab") as log:
        result = subprocess.run(aesemo_command("worker", "--burst"), env=env, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, timeout=timeout)
    return result
