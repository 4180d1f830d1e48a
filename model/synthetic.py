"""Generated training images whose two labels are visible: the aesthetic class sets the
brightness, the emotion class sets the dominant hue. For the demo and the tests (no data
set can be downloaded here)."""
from __future__ import annotations

import colorsys
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .classes import DEFAULT_CLASSES


def synthetic_image(aesthetic: int, emotion: int, num_emotions: int, rng: random.Random, size: int = 96) -> Image.Image:
    hue = (emotion + rng.uniform(-0.2, 0.2)) / num_emotions
    value = rng.uniform(0.75, 0.95) if aesthetic == 0 else rng.uniform(0.2, 0.4)
    base = np.array(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.6, 0.9), value)) * 255
    noise = np.random.default_rng(rng.randrange(2 ** 32)).normal(0, 12, (size, size, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):  # distractors: grey shapes that carry no label information
        x, y, r = rng.randrange(size), rng.randrange(size), rng.randrange(4, size // 5)
        grey = rng.randrange(60, 200)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(grey, grey, grey))
    return image


def write_synthetic_set(folder: str | Path, count: int, seed: int = 0, size: int = 96,
                        classes: dict | None = None) -> Path:
    """`count` PNGs plus `manifest.jsonl` in `folder`; returns the manifest's path."""
    classes = classes or DEFAULT_CLASSES
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = [json.dumps({"classes": {task: list(names) for task, names in classes.items()}})]
    n_a, n_e = len(classes["aesthetic"]), len(classes["emotion"])
    for i in range(count):
        a, e = i % n_a, (i // n_a) % n_e
        name = f"img{i:04d}.png"
        synthetic_image(a, e, n_e, rng, size).save(folder / name)
        lines.append(json.dumps({"image": name, "aesthetic": classes["aesthetic"][a],
                                 "emotion": classes["emotion"][e]}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest
