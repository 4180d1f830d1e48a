"""Generated training images whose two labels are visible: the aesthetic class sets the
brightness, the emotion class sets the dominant hue. For the demo and the tests (no data
set can be downloaded here)."""
from __future__ import annotations

import colorsys
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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


def hue_sharpness_image(aesthetic: int, emotion: int, num_emotions: int, rng: random.Random,
                        size: int = 128) -> Image.Image:
    """The ablation's image: the emotion class is the background hue, the aesthetic
    class is sharp (0) or blurred (1) texture; grey shapes are distractors for both tasks."""
    hue = (emotion + rng.uniform(-0.25, 0.25)) / num_emotions
    base = np.array(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.9))) * 255
    image = Image.new("RGB", (size, size), tuple(int(c) for c in base))
    draw = ImageDraw.Draw(image)
    for _ in range(12):  # thin dark and light strokes: what blurring removes
        x0, y0, x1, y1 = (rng.randrange(size) for _ in range(4))
        tone = rng.choice((20, 235))
        draw.line((x0, y0, x1, y1), fill=(tone, tone, tone), width=max(size // 64, 1))
    for _ in range(3):
        x, y, r = rng.randrange(size), rng.randrange(size), rng.randrange(size // 16 + 2, size // 5)
        grey = rng.randrange(60, 200)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(grey, grey, grey))
    if aesthetic == 1:
        image = image.filter(ImageFilter.GaussianBlur(radius=size / 40))
    noise = np.random.default_rng(rng.randrange(2 ** 32)).normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=float) + noise, 0, 255).astype(np.uint8))


def generated_training_data(count: int, seed: int = 0, size: int = 128, emotion_share: list[float] | None = None,
                            classes: dict | None = None):
    """`count` hue/sharpness images as in-memory TrainingData (uint8, size x size), for the
    ablation and learning benchmarks and the tests. Aesthetic classes alternate; emotion
    classes cycle, or are drawn with the probabilities `emotion_share` (a skewed set)."""
    import torch

    from .dataset import TrainingData, stack_targets
    from .manifest import Row

    classes = classes or DEFAULT_CLASSES
    n_a, n_e = len(classes["aesthetic"]), len(classes["emotion"])
    rng = random.Random(seed)
    images, rows = [], []
    for i in range(count):
        a = i % n_a
        e = rng.choices(range(n_e), weights=emotion_share)[0] if emotion_share else (i // n_a) % n_e
        image = hue_sharpness_image(a, e, n_e, rng, size)
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous())
        rows.append(Row(line=i + 1, image=Path(f"generated{i:04d}.png"),
                        targets={"aesthetic": torch.eye(n_a)[a], "emotion": torch.eye(n_e)[e]}))
    targets, masks = stack_targets(rows, classes)
    return TrainingData(images=torch.stack(images), targets=targets, masks=masks,
                        weights=torch.ones(count), rows=rows)
