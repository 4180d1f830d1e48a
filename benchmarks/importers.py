"""Dataset importers at full size, on generated annotation files (no image files):

    .venv/bin/python benchmarks/importers.py [--ava-rows 255000] [--emoset-images 118000]

(a) AVA: an AVA.txt of --ava-rows lines and the two split lists (90 % / 10 %), imported with
    hard labels; (b) EmoSet: info.json and train/val/test.json of --emoset-images items
    (80/5/15 %). Each import runs twice, each time in a fresh child process: once untimed by
    anything else (seconds, rows per second), once under tracemalloc for the peak of Python's
    allocations during the import (tracing slows it several times over; ru_maxrss is no use here,
    it carries the generating parent's peak across fork and exec).
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EMOTIONS = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]


def make_ava(root: Path, rows: int, rng: random.Random) -> None:
    (root / "images").mkdir(parents=True)
    lists = root / "aesthetics_image_lists"
    lists.mkdir()
    ids = [str(100000 + i) for i in range(rows)]
    with open(root / "AVA.txt", "w") as out:
        for index, image_id in enumerate(ids, start=1):
            counts = [rng.randint(0, 40) for _ in range(10)]
            out.write(" ".join([str(index), image_id, *map(str, counts), "21", "0", "1396"]) + "\n")
    cut = rows * 9 // 10
    (lists / "generic_ls_train.jpgl").write_text("\n".join(ids[:cut]) + "\n")
    (lists / "generic_test.jpgl").write_text("\n".join(ids[cut:]) + "\n")


def make_emoset(root: Path, images: int, rng: random.Random) -> None:
    root.mkdir(parents=True)
    info = {"emotion": {"label2idx": {e: i for i, e in enumerate(EMOTIONS)}}}
    (root / "info.json").write_text(json.dumps(info))
    items = []
    for i in range(images):
        emotion = rng.choice(EMOTIONS)
        items.append([emotion, f"{emotion}_{i:05d}", f"image/{emotion}/{emotion}_{i:05d}.jpg",
                      f"annotation/{emotion}/{emotion}_{i:05d}.json"])
    bounds = {"train": (0, images * 80 // 100), "val": (images * 80 // 100, images * 85 // 100),
              "test": (images * 85 // 100, images)}
    for split, (start, end) in bounds.items():
        (root / f"{split}.json").write_text(json.dumps(items[start:end]))


def measure(name: str, root: Path, out: Path, traced: bool) -> dict:
    """Run one import in a child process; it prints its own seconds, rows and peak memory."""
    code = "\n".join([
        f"import json, sys, time, tracemalloc; sys.path.insert(0, {str(ROOT)!r})",
        "from model.datasets import import_dataset",
        "tracemalloc.start()" if traced else "",
        "started = time.perf_counter()",
        f"counts = import_dataset({name!r}, {str(root)!r}, {str(out)!r})",
        "seconds = time.perf_counter() - started",
        "print(json.dumps({'seconds': seconds, 'rows': sum(counts.values()),"
        " 'peak_mib': tracemalloc.get_traced_memory()[1] / 2**20}))",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ava-rows", type=int, default=255_000)
    parser.add_argument("--emoset-images", type=int, default=118_000)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_ava(tmp / "ava", args.ava_rows, rng)
        make_emoset(tmp / "emoset", args.emoset_images, rng)
        for name in ("ava", "emoset"):
            timed = measure(name, tmp / name, tmp / f"{name}-out", traced=False)
            peak_mib = measure(name, tmp / name, tmp / f"{name}-out", traced=True)["peak_mib"]
            print(f"{name}: {timed['rows']} rows in {timed['seconds']:.2f} s "
                  f"({timed['rows'] / timed['seconds']:,.0f} rows/s), peak {peak_mib:.1f} MiB (tracemalloc)")


if __name__ == "__main__":
    main()
