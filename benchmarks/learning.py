"""Learning curves on generated images: held-out accuracy and macro-F1 per task against the
number of labels, for random and "pretrained" starts, frozen-then-unfrozen ("auto") and full
fine-tuning, and the cross-branch variants. One table (mean +- std over seeds), then the seconds
of one 96-label run at the product's resolution.

    .venv/bin/python benchmarks/learning.py [--sizes 24,48,96,192,384] [--seeds 0,1,2]
        [--configs random,random-nocross,random-crossrandom,pretrained-full,pretrained-auto]
        [--size 96 --crop 80] [--epochs 15] [--lr 0.01] [--finetune-lr 0.001] [--work benchmarks/.learning]
        [--timing | --no-timing] [--timing-finetune full|auto|frozen] [--timing-precision fp32,auto]
        [--timing-seeds 0,1,2] [--timing-job] [--no-timing-runs]

The target task: emotion (8 classes) is the background hue, aesthetic (2 classes) is a sharp
versus a blurred picture, with grey shapes as distractors, and the blur softening the hue's
edges too (the two tasks share low-level structure). The "pretrained" start, standing in for
ImageNet, is the same network trained first on a disjoint source task: the hue of a foreground
disc (8 hues between the target's) and whether a striped picture is sharp or blurred, on
backgrounds of any hue (different pictures and classes; the same low-level structure, hue and
sharpness, that ImageNet features carry); it is cached under --work, keyed by its settings and
the source generator's version, so reruns skip it.

The curves run at a reduced resolution (default 96 resize, 80 crop) so that the 2-core CPU can
afford them; held-out images are a separate generated test set (192 by default), never trained on.
"""
from __future__ import annotations

import argparse
import colorsys
import hashlib
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.classes import DEFAULT_CLASSES, TASKS
from model.dataset import TrainingData
from model.finetune import DEFAULT_FULL_FINETUNE_LABELS, FINETUNE_MODES
from model.manifest import Row
from model.crossval import CrossValidation
from model.heldout import HELDOUT_SPLIT
from model.metrics import task_metrics
from model.network import CrossBranchNet, NetConfig
from model.pipeline import fit
from model.train import TrainConfig, eval_view, split_indices, train
from model.transforms import IMAGENET_STD, normalize

import job_path

EMOTIONS, AESTHETICS = len(DEFAULT_CLASSES["emotion"]), len(DEFAULT_CLASSES["aesthetic"])
SOURCE_TASK = "disc hue, sharp or blurred stripes"   # part of the cached source model's key
# name -> (start, finetune, network options)
CONFIGS = {
    "random": ("random", "full", {}),
    "random-nocross": ("random", "full", {"cross_branch": False}),
    "random-crossrandom": ("random", "full", {"cross_init": "random"}),
    "pretrained-full": ("pretrained", "full", {}),
    "pretrained-auto": ("pretrained", "auto", {}),
    "pretrained-frozen": ("pretrained", "frozen", {}),
    "pretrained-full-nocross": ("pretrained", "full", {"cross_branch": False}),
    "pretrained-auto-nocross": ("pretrained", "auto", {"cross_branch": False}),
}


def _shapes(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator, count: int = 3) -> None:
    for _ in range(count):  # grey distractors with hard edges, carrying no label
        x, y, r = rng.integers(size), rng.integers(size), rng.integers(max(size // 12, 2), max(size // 4, 3))
        grey = int(rng.integers(50, 210))
        box = (x - r, y - r, x + r, y + r)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=(grey, grey, grey))


def _finish(image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 4, (image.height, image.width, 3))
    return torch.from_numpy(np.clip(noisy, 0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()


def _rgb(hue: float, rng: np.random.Generator) -> tuple[int, int, int]:
    rgb = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.55, 0.9), rng.uniform(0.55, 0.9))
    return tuple(int(c * 255) for c in rgb)


def target_image(aesthetic: int, emotion: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    image = Image.new("RGB", (size, size), _rgb((emotion + rng.uniform(-0.35, 0.35)) / EMOTIONS, rng))
    _shapes(ImageDraw.Draw(image), size, rng, count=5)
    if aesthetic == 1:  # "low": blurred
        image = image.filter(ImageFilter.GaussianBlur(radius=size / 40))
    return _finish(image, rng)


def source_image(blurred: int, hue_class: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    image = Image.new("RGB", (size, size), _rgb(rng.random(), rng))
    draw = ImageDraw.Draw(image)
    period = max(size // 8, 3)
    horizontal = rng.random() < 0.5
    for k in range(0, size, period):  # stripes of either orientation: a picture unlike the target's
        draw.rectangle((0, k, size, k + period // 2) if horizontal else (k, 0, k + period // 2, size),
                       fill=(128, 128, 128))
    x, y, r = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [size // 4]
    draw.ellipse((x - r, y - r, x + r, y + r), fill=_rgb((hue_class + 0.5 + rng.uniform(-0.3, 0.3)) / EMOTIONS, rng))
    if blurred:  # sharpness, the low-level property ImageNet features also carry
        image = image.filter(ImageFilter.GaussianBlur(radius=size / 40))
    return _finish(image, rng)


def generated_set(kind: str, count: int, size: int, seed: int) -> TrainingData:
    """`count` images with balanced labels in a seeded random order."""
    rng = np.random.default_rng(seed)
    labels = [(i % AESTHETICS, (i // AESTHETICS) % EMOTIONS) for i in range(count)]
    labels = [labels[i] for i in rng.permutation(count)]
    draw = target_image if kind == "target" else source_image
    images = torch.stack([draw(a, e, size, rng) for a, e in labels])
    targets = {"aesthetic": torch.nn.functional.one_hot(torch.tensor([a for a, _ in labels]), AESTHETICS).float(),
               "emotion": torch.nn.functional.one_hot(torch.tensor([e for _, e in labels]), EMOTIONS).float()}
    rows = [Row(line=i, image=Path(f"{kind}{i}"), targets={t: targets[t][i] for t in TASKS}, weight=1.0)
            for i in range(count)]
    return TrainingData(images=images, targets=targets, masks={t: torch.ones(count) for t in TASKS},
                        weights=torch.ones(count), rows=rows)


def pretrained_start(options: dict, train_config: TrainConfig, args, work: Path) -> CrossBranchNet:
    """The network trained on the source task, from disk when a run with these settings made it."""
    net = NetConfig(backbone=args.backbone, **options)
    key = json.dumps([SOURCE_TASK, net.to_dict(), args.source_images, args.source_epochs, train_config.train_size,
                      train_config.crop_size, args.lr], sort_keys=True)
    path = work / f"source-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    model = CrossBranchNet(net)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model
    started = time.monotonic()
    source = generated_set("source", args.source_images, train_config.train_size, seed=10_000)
    result = train(model, source, replace(train_config, epochs=args.source_epochs, patience=0, finetune="full",
                                          seed=0))
    work.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    print(f"# source model {path.name} ({', '.join(f'{k}={v}' for k, v in options.items()) or 'cross, identity'}): "
          f"{_scores(result.metrics)} on source held-out, {time.monotonic() - started:.0f} s", flush=True)
    return model


def _scores(metrics: dict) -> str:
    return ", ".join(f"{t} {m['accuracy']:.2f}" for t, m in metrics.items() if m)


@torch.no_grad()
def test_metrics(model: CrossBranchNet, test: TrainingData, mean, crop: int) -> dict:
    model.eval()
    images = normalize(eval_view(test.images, crop, False), mean, IMAGENET_STD)
    logits = [torch.cat(part) for part in zip(*(model(images[i:i + 64]) for i in range(0, len(images), 64)))]
    return {t: task_metrics(torch.softmax(out, 1), test.targets[t], test.masks[t]) for t, out in zip(TASKS, logits)}


def one_run(name: str, labels: int, seed: int, pool: TrainingData, test: TrainingData, train_config: TrainConfig,
            args, work: Path) -> dict:
    start, finetune, options = CONFIGS[name]
    torch.manual_seed(seed)
    model = pretrained_start(options, train_config, args, work) if start == "pretrained" \
        else CrossBranchNet(NetConfig(backbone=args.backbone, **options))
    subset = pool.subset(torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:labels])
    result = train(model, subset, replace(train_config, finetune=finetune, seed=seed, lr=args.finetune_lr))
    metrics = test_metrics(model, test, result.pixel_mean, train_config.crop_size)
    return {"seconds": result.seconds, **{f"{t}_{k}": metrics[t][k] for t in TASKS for k in ("accuracy", "macro_f1")}}


def _cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def curves(args, work: Path) -> None:
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, patience=args.patience,
                         train_size=args.size, crop_size=args.crop, full_finetune_labels=args.full_finetune_labels)
    sizes, seeds = [int(s) for s in args.sizes.split(",")], [int(s) for s in args.seeds.split(",")]
    pool = generated_set("target", max(sizes), args.size, seed=1)
    test = generated_set("target", args.test_images, args.size, seed=2)
    print(f"{args.backbone}, {args.size} resize, {args.crop} crop, {args.epochs} epochs (patience {args.patience}), "
          f"lr {args.finetune_lr} (source model {args.lr}), batch {args.batch_size}; {len(test)} test images; "
          f"mean ± std over seeds {args.seeds}; "
          "20 % of each labelled set is the training loop's own held-out split", flush=True)
    print("\n| start, fine-tuning | labels | aesthetic acc | aesthetic F1 | emotion acc | emotion F1 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        for labels in sizes:
            runs = [one_run(name, labels, seed, pool, test, config, args, work) for seed in seeds]
            cells = [_cell([r[k] for r in runs]) for k in
                     ("aesthetic_accuracy", "aesthetic_macro_f1", "emotion_accuracy", "emotion_macro_f1")]
            print(f"| {name} | {labels} | {' | '.join(cells)} | {statistics.mean(r['seconds'] for r in runs):.1f} |",
                  flush=True)


def timing(args, work: Path) -> None:
    """96-label runs at the product's resolution (256 resize, 224 crop) from the pretrained start:
    for each --timing-precision and seed, one train() call (early stopping on a random 20 %
    held-out split), and with --timing-job the training job's own path too (that held-out split
    is under AESEMO_MIN_HELDOUT tasks, so it trains every epoch and keeps the last); then each
    precision's speed-up over the first; then, with --timing-job, the job's whole path through a
    worker beside a plain `aesemo train` (benchmarks/job_path.py)."""
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, patience=args.patience,
                         finetune=args.timing_finetune, full_finetune_labels=args.full_finetune_labels)
    source_config = replace(config, train_size=args.size, crop_size=args.crop)
    start = pretrained_start({}, source_config, args, work).state_dict()
    config = replace(config, epochs=args.timing_epochs)
    data = generated_set("target", 96, 256, seed=1)
    test = generated_set("target", args.test_images, 256, seed=2)
    paths = (["train()"] + (["job"] if args.timing_job else [])) if args.timing_runs else []
    seconds = {}
    print(f"\n96 labels, {args.backbone}, 256 resize, 224 crop, pretrained start (source model of the curves), "
          f"{args.timing_finetune} fine-tuning, up to {args.timing_epochs} epochs, patience {args.patience}, "
          f"{torch.get_num_threads()} threads; CPU time / threads is the wall time a run would take alone")
    print("\n| path | precision | seed | chose | epochs | seconds | CPU s / threads | aesthetic acc | emotion acc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        for precision in args.timing_precision.split(","):
            for seed in [int(s) for s in args.timing_seeds.split(",")]:
                model = CrossBranchNet(NetConfig(backbone=args.backbone))
                model.load_state_dict(start)
                run_config = replace(config, lr=args.finetune_lr, precision=precision, seed=seed)
                started, cpu_started = time.monotonic(), time.process_time()
                result, epochs = _timed_path(path, model, data, run_config)
                took, cpu = time.monotonic() - started, time.process_time() - cpu_started
                seconds.setdefault((path, precision), []).append(took)
                metrics = test_metrics(model, test, result.pixel_mean, 224)
                print(f"| {path} | {precision} | {seed} | {result.precision} | {epochs} | {took:.1f} | "
                      f"{cpu / torch.get_num_threads():.1f} | {metrics['aesthetic']['accuracy']:.2f} | "
                      f"{metrics['emotion']['accuracy']:.2f} |", flush=True)
    for path in paths:
        first = statistics.mean(seconds[(path, args.timing_precision.split(",")[0])])
        for (each, precision), values in seconds.items():
            if each == path:
                print(f"{path}, precision {precision}: mean {statistics.mean(values):.1f} s, "
                      f"{first / statistics.mean(values):.2f}x the speed of the first precision")
    if args.timing_job:
        model = CrossBranchNet(NetConfig(backbone=args.backbone))
        model.load_state_dict(start)
        job_path.report(job_path.end_to_end(model, data, test, lambda net, mean: test_metrics(net, test, mean, 224)))


def _timed_path(path: str, model: CrossBranchNet, data: TrainingData, config: TrainConfig):
    """One timed training of `model` on `data`: the result and the epochs it ran (for the job,
    as its fit() runs on this held-out split of 19 tasks: the folds' epochs, when any, then the
    final run's)."""
    if path == "train()":
        result = train(model, data, config)
        return result, str(result.epochs_run)
    marked = set(split_indices(len(data), config.val_fraction, config.seed)[1].tolist())
    rows = [replace(row, split=HELDOUT_SPLIT if i in marked else None) for i, row in enumerate(data.rows)]
    result, report = fit(model, replace(data, rows=rows), replace(config, heldout_split=HELDOUT_SPLIT),
                         CrossValidation(), None, False)
    if report is None:
        return result, f"{result.epochs_run} ({result.stopping.split(':')[0]})"
    return result, f"{'+'.join(str(h) for h in report['epochs_run'])}, then {result.epochs_run}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="24,48,96,192,384")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--configs", default="random,random-nocross,random-crossrandom,pretrained-full,pretrained-auto")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=96, help="resize of the curves' images")
    parser.add_argument("--crop", type=int, default=80, help="random crop of the curves' images")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.01, help="the source model's learning rate")
    parser.add_argument("--finetune-lr", type=float, default=TrainConfig.lr,
                        help="the target runs' learning rate (default: the training job's, AESEMO_TRAIN_LR)")
    parser.add_argument("--full-finetune-labels", type=int, default=DEFAULT_FULL_FINETUNE_LABELS,
                        help="'auto' fine-tuning: every layer trains from this many labels (AESEMO_FULL_FINETUNE_LABELS)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--test-images", type=int, default=192)
    parser.add_argument("--source-images", type=int, default=640)
    parser.add_argument("--source-epochs", type=int, default=6)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / ".learning")
    parser.add_argument("--timing", action=argparse.BooleanOptionalAction, default=True,
                        help="also time one 96-label run at 224 (default on)")
    parser.add_argument("--timing-finetune", choices=FINETUNE_MODES, default="full",
                        help="the timed run's fine-tuning (default: the training job's, AESEMO_FINETUNE)")
    parser.add_argument("--timing-precision", default="auto",
                        help="the timed runs' precisions, comma-separated, from auto, fp32, bf16 "
                             "(default: the training job's, AESEMO_TRAIN_PRECISION)")
    parser.add_argument("--timing-epochs", type=int, default=TrainConfig.epochs,
                        help="the timed runs' epochs (default: the training job's, AESEMO_TRAIN_EPOCHS)")
    parser.add_argument("--timing-seeds", default="0", help="the timed runs' seeds, comma-separated")
    parser.add_argument("--timing-job", action="store_true",
                        help="also time the training job's path: in process, then end to end through a worker "
                             "beside a plain `aesemo train` of the same start on the same images")
    parser.add_argument("--timing-runs", action=argparse.BooleanOptionalAction, default=True,
                        help="the in-process timed runs per precision and seed (--no-timing-runs with --timing-job: "
                             "only the end-to-end job and plain `aesemo train`)")
    parser.add_argument("--curves", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown:
        parser.error(f"--configs: unknown {', '.join(sorted(unknown))}; choose from {', '.join(CONFIGS)}")
    if args.curves:
        curves(args, args.work)
    if args.timing:
        timing(args, args.work)


if __name__ == "__main__":
    main()
