"""Peak memory of decoding one image into 8-bit RGB (model/images.py's open_image), per kind:

    .venv/bin/python benchmarks/image_decode.py [--side 7000]

Generates, at --side x --side pixels: a 16-bit grey PNG, an RGBA PNG, an 8-bit RGB PNG, a
palette PNG with a transparent colour and an RGB JPEG (smooth gradients, so the PNGs are small
files: the point is that the file size says nothing about the decode). Each is decoded in a fresh
Python process (`--child PATH`, which prints one JSON line), which reports the growth of its
resident memory from just before the decode to its peak (VmHWM; PIL's pixel buffers are
invisible to tracemalloc), and tracemalloc's peak (numpy's temporaries). Printed next to the bound the decode is checked against
(`decode_bytes`: the pixels as decoded plus the RGB copy, refused over
AESEMO_MAX_IMAGE_DECODE_BYTES) and the final RGB size (width x height x 3).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MB = 1e6


def _gradient(side: int, angle: int = 0):
    from PIL import Image
    return Image.linear_gradient("L").rotate(angle).resize((side, side), Image.BILINEAR)


def make_images(folder: Path, side: int) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    grey = _gradient(side)
    rows = np.linspace(0, 65535, side, dtype=np.uint32).astype(np.uint16)
    grey16 = Image.fromarray(np.ascontiguousarray(np.broadcast_to(rows[:, None], (side, side))))
    rgb = lambda: Image.merge("RGB", (grey, _gradient(side, 90), _gradient(side, 180)))
    makers = {  # name: (image maker, save options)
        "grey16.png": (lambda: grey16, {"compress_level": 1}),
        "rgba.png": (lambda: Image.merge("RGBA", (grey, _gradient(side, 90), _gradient(side, 180),
                                                  _gradient(side, 270))), {"compress_level": 1}),
        "rgb.png": (rgb, {"compress_level": 1}),
        "palette.png": (lambda: grey.convert("P"), {"compress_level": 1, "transparency": 0}),
        "photo.jpg": (rgb, {"quality": 90}),
    }
    paths = {}
    for name, (make, options) in makers.items():
        paths[name] = folder / name
        make().save(paths[name], **options)
    return paths


def _status_bytes(field: str) -> int:
    """A memory figure of /proc/self/status (VmRSS: resident now, VmHWM: its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    """Start VmHWM again from the resident size now (Linux 4.0+), so the peak is the decode's
    alone. ru_maxrss would not do: it keeps the parent's peak across fork and exec."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # an older kernel: VmHWM then starts at this fresh process's own peak
        pass


def measure_one(path: str) -> dict:
    """In a fresh process: the decode's memory figures for `path`."""
    from PIL import Image

    from model.images import decode_bytes, open_image

    with Image.open(path) as header:
        mode, (width, height) = header.mode, header.size
    _reset_peak()
    before = _status_bytes("VmRSS")
    tracemalloc.start()
    image = open_image(path, max_pixels=10 ** 12, max_decode_bytes=2 ** 62)
    traced_peak = tracemalloc.get_traced_memory()[1]
    peak = _status_bytes("VmHWM")
    assert image.mode == "RGB" and image.size == (width, height)
    return {"mode": mode, "size": [width, height], "rss_growth": peak - before, "traced_peak": traced_peak,
            "bound": decode_bytes(mode, (width, height)), "rgb": width * height * 3}


def measure(path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=7000, help="width and height of each image")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_one(args.child)))
        return
    with tempfile.TemporaryDirectory() as folder:
        paths = make_images(Path(folder), args.side)
        print(f"{'image':12} {'file KB':>8} {'mode':>5} {'RGB MB':>7} {'bound MB':>9} {'peak MB':>8} "
              f"{'peak/bound':>10} {'numpy MB':>9}")
        for name, path in paths.items():
            m = measure(path)
            print(f"{name:12} {path.stat().st_size / 1e3:8.0f} {m['mode']:>5} {m['rgb'] / MB:7.0f} "
                  f"{m['bound'] / MB:9.0f} {m['rss_growth'] / MB:8.0f} {m['rss_growth'] / m['bound']:10.2f} "
                  f"{m['traced_peak'] / MB:9.1f}")


if __name__ == "__main__":
    main()
