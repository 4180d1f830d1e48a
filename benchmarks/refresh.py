"""The prediction refresh end to end through a real Label Studio 1.23.2, in one run:

    .venv/bin/python benchmarks/refresh.py [--tasks 2000] [--backbone resnet18]

A Label Studio (tests/e2e/ls_server.py), `aesemo serve` and a loopback image server start on
127.0.0.1; a project of --tasks generated images is connected to the backend (its first /setup
queues a refresh), and `aesemo worker --burst` runs the refresh: list the tasks, predict, delete
old predictions, import the new ones in bulk. Printed: tasks written, the job's own seconds
(started to ended, from RQ) and tasks/s, the worker's wall time (its start, the model load and
torch import included), and the share of the tasks whose predictions Label Studio's API then
returns with the job's version. Everything stops at the end, on errors too.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e")]

from backend.core.redis_connection import embedded_socket_path
from backend_proc import LABEL_CONFIG, BackendProcess, aesemo_executable, backend_env
from images_server import ImageServer
from ls_server import LabelStudioServer
from net import free_port, wait_for


def seconds_between(started: str, ended: str) -> float:
    moment = "%Y-%m-%dT%H:%M:%SZ"
    return (datetime.strptime(ended, moment) - datetime.strptime(started, moment)).total_seconds()


def cpu_description() -> str:
    """The CPU's model name (platform.processor() is empty on most Linux systems), its cores and
    the load at start: the figures depend on all three."""
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    model = names[0] if names else platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"


def run(tasks: int, backbone: str, root: Path) -> None:
    machine = cpu_description()  # before Label Studio and the backend add their own load
    with ImageServer() as images, LabelStudioServer(root / "ls") as ls:
        env = backend_env(root / "data", ls.url, images.port, LABEL_STUDIO_API_KEY=ls.token,
                          AESEMO_BACKBONE=backbone, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        backend = BackendProcess("bench", root / "data", free_port(), env)
        backend.start()
        try:
            project = ls.create_project("refresh benchmark", LABEL_CONFIG)["id"]
            for start in range(0, tasks, 500):
                ls.import_tasks(project, [{"image": images.url(f"/img/{n}.png")}
                                          for n in range(start, min(tasks, start + 500))])
            ls.connect_ml_backend(project, backend.url)
            wait_for(lambda: backend.get(f"/projects/{project}/refresh").json()["jobs"], 60, what="refresh job")
            worker_env = dict(env, REDIS_URL=f"unix://{embedded_socket_path(backend.data_dir)}")
            began = time.monotonic()
            with open(root / "worker.log", "wb") as log:
                subprocess.run([aesemo_executable(), "worker", "--burst"], env=worker_env, cwd=root, check=True,
                               stdout=log, stderr=subprocess.STDOUT, timeout=3600)
            wall = time.monotonic() - began
            [job] = backend.get(f"/projects/{project}/refresh").json()["jobs"]
            progress = job["progress"]
            job_s = seconds_between(job["started_at"], job["ended_at"])
            listed = ls.tasks(project, page_size=1000)
            with_version = sum(1 for t in listed if t.get("total_predictions"))
            print(f"CPU: {machine}; OMP_NUM_THREADS={env['OMP_NUM_THREADS']}")
            print(f"backbone {backbone}, {tasks} tasks, status {job['status']}, version {progress.get('version')}")
            print(f"written {progress.get('written')} of {progress.get('tasks')}, failed {progress.get('failed')}")
            print(f"refresh job: {job_s:.0f} s, {progress.get('written', 0) / max(job_s, 1):.1f} tasks/s "
                  f"(end to end: list, fetch, predict, delete, bulk import through Label Studio's API)")
            print(f"worker wall time {wall:.0f} s ({progress.get('written', 0) / wall:.1f} tasks/s with its start)")
            print(f"tasks with a prediction in Label Studio afterwards: {with_version}/{len(listed)}")
        finally:
            backend.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--backbone", default="resnet18")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aesemo-refresh-bench-") as root:
        run(args.tasks, args.backbone, Path(root))


if __name__ == "__main__":
    main()
