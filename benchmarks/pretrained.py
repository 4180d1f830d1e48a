"""The ImageNet start: download of a generated weights file from a loopback server (seconds,
MB/s), and `aesemo init` started cold (empty TORCH_HOME: download included) and cached.

    .venv/bin/python benchmarks/pretrained.py [--backbone vgg16] [--repeats 1]

The file has the keys and shapes of torchvision's state dict of the backbone (528 MB for vgg16),
filled with random numbers, under torchvision's hashed file name so torch.hub's hash check runs.
Everything talks to 127.0.0.1 only; every step runs `--repeats` times at most.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.backbones import get_spec
from model.pretrained import cache_path, fetch_weights


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def generated_weights(backbone: str, folder: Path) -> Path:
    """torchvision's state dict of `backbone` with random values, named `<backbone>-<sha256[:8]>.pth`."""
    state = {k: torch.randn(v.shape) if v.is_floating_point() else v
             for k, v in get_spec(backbone).build().state_dict().items()}
    staging = folder / "staging.pth"
    torch.save(state, staging)
    digest = hashlib.sha256()
    with open(staging, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return staging.rename(folder / f"{backbone}-{digest.hexdigest()[:8]}.pth")


def serve(folder: Path) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def timed_download(url: str, torch_home: Path) -> float:
    os.environ["TORCH_HOME"] = str(torch_home)
    cache_path(url).unlink(missing_ok=True)
    start = time.perf_counter()
    fetch_weights(url, progress=False)
    return time.perf_counter() - start


def timed_init(url: str, backbone: str, torch_home: Path, out: Path) -> float:
    env = {**os.environ, "TORCH_HOME": str(torch_home), "PYTHONPATH": str(ROOT), "AESEMO_PRETRAINED": url}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "backend.cli", "init", "--out", str(out), "--backbone", backbone],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "served").mkdir()
        file = generated_weights(args.backbone, root / "served")
        megabytes = file.stat().st_size / 1e6
        httpd = serve(root / "served")
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{file.name}"
        print(f"{file.name}: {megabytes:.0f} MB from {url}")
        for _ in range(args.repeats):
            seconds = timed_download(url, root / "download_home")
            print(f"download: {seconds:.2f} s, {megabytes / seconds:.0f} MB/s")
        for repeat in range(args.repeats):
            cold_home = root / f"init_home{repeat}"     # empty: the first init downloads
            cold = timed_init(url, args.backbone, cold_home, root / f"v_cold{repeat}")
            cached = timed_init(url, args.backbone, cold_home, root / f"v_cached{repeat}")
            print(f"aesemo init --backbone {args.backbone}: cold {cold:.2f} s (download included), "
                  f"cached {cached:.2f} s")
        httpd.shutdown()


if __name__ == "__main__":
    main()
