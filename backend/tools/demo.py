"""`aesemo demo`: trains a small two-task network on generated images and prints what it
predicts for images it has not seen: the model alone, no Redis or Label Studio (`aesemo stack`
runs the whole service)."""
from __future__ import annotations

import json
import random
from pathlib import Path

from model.classes import DEFAULT_CLASSES
from model.network import NetConfig
from model.pipeline import train_version
from model.predictor import Predictor
from model.synthetic import synthetic_image, write_synthetic_set
from model.train import TrainConfig


def run_demo(workdir: Path, epochs: int = 8) -> int:
    print(f"demo: generating 320 labelled images in {workdir / 'images'} "
          "(aesthetic = brightness, emotion = hue)", flush=True)
    manifest = write_synthetic_set(workdir / "images", 320, seed=1, size=48)
    print(f"demo: training a two-branch resnet18 for {epochs} epochs on the CPU", flush=True)
    meta = train_version(manifest, workdir / "version", NetConfig(backbone="resnet18"),
                         TrainConfig(epochs=epochs, lr=0.02, train_size=40, crop_size=35, patience=0),
                         use_pretrained=False, show_bar=True)
    for task, m in meta["metrics"].items():
        print(f"demo: held-out {task}: accuracy {m['accuracy']:.2f}, macro-F1 {m['macro_f1']:.2f}")
    predictor = Predictor(workdir / "version")
    rng = random.Random(99)
    n_e = len(DEFAULT_CLASSES["emotion"])
    print("demo: predictions for new images (truth -> predicted)")
    for _ in range(6):
        a, e = rng.randrange(2), rng.randrange(n_e)
        described = predictor.describe(predictor.predict_images([synthetic_image(a, e, n_e, rng, 48)])[0])
        truth = {"aesthetic": DEFAULT_CLASSES["aesthetic"][a], "emotion": DEFAULT_CLASSES["emotion"][e]}
        print(json.dumps({task: f"{truth[task]} -> {described[task]['class']} "
                                f"({described[task]['probability']:.2f})" for task in truth}))
    print(f"demo: the version folder is {workdir / 'version'}; try `aesemo info {workdir / 'version'}`")
    return 0
