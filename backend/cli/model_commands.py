"""The `aesemo` subcommands that work on version folders and manifests, without a service: init,
train, predict, evaluate, info, export-runtime, dataset, fetch-weights, demo."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.backbones import SPECS
from model.limits import BALANCES, PRECISIONS, SCHEDULES, TRAINING_DEFAULTS

from backend.cli.arguments import limited, share


def _net_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default=None, choices=sorted(SPECS),
                        help="network backbone (default: $AESEMO_BACKBONE or vgg16)")
    parser.add_argument("--cross-init", default="identity", choices=["identity", "random"],
                        help="initialisation of the cross-branch 1x1 convolutions (random: the patent's)")
    parser.add_argument("--alpha", type=float, default=0.9, help="identity init: weight of a branch's own half")
    parser.add_argument("--no-cross-branch", action="store_true", help="two independent branches, for comparison")
    parser.add_argument("--pretrained", default=None,
                        help="ImageNet weights: a file, an http(s) URL or none (default: $AESEMO_PRETRAINED, "
                             "else torchvision's published weights, downloaded once into $TORCH_HOME)")
    parser.add_argument("--no-pretrained", action="store_true", help="start from random weights")


def _net_config(args, classes: dict | None = None):
    from model.network import NetConfig
    from backend.core.settings import load_settings
    extra = {"aesthetic_classes": tuple(classes["aesthetic"]), "emotion_classes": tuple(classes["emotion"])} \
        if classes else {}
    return NetConfig(backbone=args.backbone or load_settings().backbone, cross_branch=not args.no_cross_branch,
                     cross_init=args.cross_init, alpha=args.alpha, **extra)


def _pretrained(args) -> dict:
    """The pretrained arguments of init_version / train_version: the flag wins over the settings."""
    from backend.core.settings import load_settings
    settings = load_settings()
    return {"pretrained": args.pretrained or settings.pretrained_path, "use_pretrained": not args.no_pretrained,
            "offline": settings.offline}


def cmd_init(args) -> int:
    from model.pipeline import init_version
    classes = None
    if args.aesthetic_classes or args.emotion_classes:
        from model.classes import DEFAULT_CLASSES
        classes = {"aesthetic": args.aesthetic_classes or DEFAULT_CLASSES["aesthetic"],
                   "emotion": args.emotion_classes or DEFAULT_CLASSES["emotion"]}
    meta = init_version(args.out, _net_config(args, classes), **_pretrained(args))
    print(json.dumps({"version": str(args.out), "init": meta["init"], "parameters": meta["parameters"]}))
    return 0


def cmd_train(args) -> int:
    from model.pipeline import train_version
    from model.train import TrainConfig
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         val_fraction=args.val_fraction, patience=args.patience, lam=args.lam,
                         schedule=args.schedule, device=args.device, train_size=args.train_size,
                         crop_size=args.crop_size, center_crop_eval=args.center_crop,
                         class_balance=args.class_balance, precision=args.precision)
    meta = train_version(args.manifest, args.out, _net_config(args), config, init_from=args.init_from,
                         strict=args.strict, **_pretrained(args), show_bar=not args.quiet)
    print(json.dumps({"version": str(args.out), "init": meta["init"], "metrics": _short(meta["metrics"]),
                      "best_epoch": meta["training"]["best_epoch"], "skipped": len(meta["training"]["skipped"])}))
    return 0


def _short(metrics: dict) -> dict:
    return {task: None if m is None else {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}
            for task, m in metrics.items()}


def cmd_predict(args) -> int:
    from model.errors import ImageError
    from model.images import open_image
    from model.predictor import Predictor
    predictor = Predictor(args.version, precision=args.precision, center_crop=args.center_crop or None)
    failed = 0
    for path in args.images:
        try:
            image = open_image(path, max_pixels=predictor.max_pixels)
        except ImageError as exc:
            print(json.dumps({"image": path, "error": str(exc)}))
            failed += 1
            continue
        described = predictor.describe(predictor.predict_images([image])[0])
        print(json.dumps({"image": path, **described}))
    return 1 if failed else 0


def cmd_evaluate(args) -> int:
    from model.evaluate import evaluate, summary_table, write_confusion_pngs
    from model.predictor import Predictor
    predictor = Predictor(args.version, device=args.device, precision=args.precision,
                          center_crop=args.center_crop or None)
    evaluation = evaluate(predictor, args.manifest, split=args.split, batch_size=args.batch_size,
                          show_bar=not args.quiet)
    report = {"version": str(args.version), "manifest": str(args.manifest), "split": args.split,
              "center_crop": predictor.center_crop, "device": str(predictor.device), **evaluation.as_json()}
    if args.out is None:
        print(json.dumps(report, indent=2))
        print(summary_table(evaluation), file=sys.stderr)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    report["figures"] = write_confusion_pngs(evaluation, args.out)
    (args.out / "evaluation.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(summary_table(evaluation))
    print(f"written: {args.out / 'evaluation.json'}, {', '.join(report['figures'])}")
    return 0


def cmd_info(args) -> int:
    from model.version import is_trained, read_meta
    meta = read_meta(args.version)
    # said for a model.json written before the field too, so no one mistakes a random model for a trained one
    print(json.dumps({**meta, "trained": is_trained(meta)}, indent=2))
    return 0


def cmd_export_runtime(args) -> int:
    from model import runtime
    calibration = runtime.manifest_images(args.calibration, args.version) if args.calibration else None
    held_out = (runtime.manifest_images(args.held_out, args.version, limit=runtime.HELD_OUT_IMAGES)
                if args.held_out else None)
    record = runtime.export_runtime(args.version, calibration, held_out, args.min_agreement, precision=args.precision)
    print(json.dumps({k: record[k] for k in ("serving", "reason", "images", "variants", "pytorch_ms_per_image",
                                            "pytorch_precision")}, indent=2))
    return 0


def cmd_dataset(args) -> int:
    if args.name == "merge":
        from model.datasets.merge import merge_manifests
        rows = merge_manifests([Path(p) for p in args.roots], Path(args.out))
        print(json.dumps({"manifest": args.out, "rows": rows}))
        return 0
    if len(args.roots) != 1:
        raise ValueError(f"dataset {args.name} takes one ROOT folder, got {len(args.roots)}")
    from model.datasets import import_dataset
    counts = import_dataset(args.name, args.roots[0], args.out, soft=args.soft)
    print(json.dumps({"out": args.out, "rows": counts}))
    return 0


def cmd_fetch_weights(args) -> int:
    """torchvision's ImageNet weights of each backbone into $TORCH_HOME (the Docker images run it at build)."""
    from backend.core.settings import load_settings
    from model.pretrained import fetch_weights, imagenet_url
    offline = load_settings().offline
    for backbone in args.backbone:
        print(json.dumps({"backbone": backbone, "file": str(fetch_weights(imagenet_url(backbone), offline))}))
    return 0


def cmd_demo(args) -> int:
    from backend.tools.demo import run_demo
    return run_demo(Path(args.workdir), epochs=args.epochs)


def _training_flags(p: argparse.ArgumentParser) -> None:
    """`aesemo train`'s numbers and choices: the defaults and ranges of model/limits.py."""
    default = TRAINING_DEFAULTS
    p.add_argument("--epochs", type=limited("epochs"), default=default["epochs"])
    p.add_argument("--batch-size", type=limited("batch_size"), default=default["batch_size"])
    p.add_argument("--lr", type=limited("lr"), default=default["lr"])
    p.add_argument("--lam", type=limited("lam"), default=default["lam"], help="weight of the emotion loss (lambda)")
    p.add_argument("--schedule", default=default["schedule"], choices=SCHEDULES)
    p.add_argument("--val-fraction", type=limited("val_fraction"), default=default["val_fraction"])
    p.add_argument("--patience", type=limited("patience"), default=default["patience"],
                   help="early stopping; 0 switches it off")
    p.add_argument("--seed", type=limited("seed"), default=default["seed"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--train-size", type=limited("train_size"), default=default["train_size"])
    p.add_argument("--crop-size", type=limited("crop_size"), default=default["crop_size"])
    p.add_argument("--center-crop", action="store_true", help="evaluate and predict on a centre crop")
    p.add_argument("--class-balance", default=default["class_balance"], choices=BALANCES,
                   help="skewed labels: class weights in the loss (default), balanced batches, or neither")
    p.add_argument("--precision", default=default["precision"], choices=PRECISIONS,
                   help="fp32 or bf16 autocast; auto: bf16 where a timed training step is clearly faster")


def add_model_commands(sub) -> None:
    p = sub.add_parser("init", help="write an untrained (or ImageNet-initialised) version folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--aesthetic-classes", type=lambda s: s.split(","), default=None, help="comma-separated")
    p.add_argument("--emotion-classes", type=lambda s: s.split(","), default=None, help="comma-separated")
    _net_flags(p)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("train", help="train on a JSON-lines manifest and write a version folder")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--init-from", type=Path, default=None, help="fine-tune this version folder")
    _training_flags(p)
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _net_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict both classes of images; one JSON object a line")
    p.add_argument("version", type=Path)
    p.add_argument("images", nargs="+")
    p.add_argument("--precision", default=TRAINING_DEFAULTS["precision"], choices=PRECISIONS)
    p.add_argument("--center-crop", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="a version's accuracy, macro-F1, recall and calibration on a manifest")
    p.add_argument("version", type=Path)
    p.add_argument("manifest", type=Path)
    p.add_argument("--split", default=None,
                   help="only rows whose \"split\" field is this (e.g. test); rows without the field: all rows")
    p.add_argument("--center-crop", action="store_true", help="predict on a centre crop (default: the version's)")
    p.add_argument("--out", type=Path, default=None,
                   help="write evaluation.json and confusion PNGs here (default: JSON on stdout)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--precision", default=TRAINING_DEFAULTS["precision"], choices=PRECISIONS)
    p.add_argument("--batch-size", type=limited("batch_size"), default=32)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("info", help="a version's metadata as JSON")
    p.add_argument("version", type=Path)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("dataset", help="a public dataset (ava, fi, emoset, iea) as training manifests, or merge manifests")
    p.add_argument("name", choices=["ava", "fi", "emoset", "iea", "merge"])
    p.add_argument("roots", nargs="+", metavar="ROOT",
                   help="the dataset's folder as published; for merge: the manifests to concatenate")
    p.add_argument("--out", required=True, help="folder for <split>.jsonl (merge: the manifest file to write)")
    p.add_argument("--soft", action="store_true",
                   help="AVA, IEA: aesthetic targets from the share of ratings above 5 instead of high/low by mean")
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("fetch-weights", help="download torchvision's ImageNet weights into $TORCH_HOME")
    p.add_argument("--backbone", nargs="+", default=["vgg16"], choices=sorted(SPECS))
    p.set_defaults(func=cmd_fetch_weights)

    p = sub.add_parser("export-runtime", help="export a version to OpenVINO (int8 first, float32 last) and record which "
                                              "variant serves, checked against PyTorch (else made on first load)")
    p.add_argument("version", type=Path)
    p.add_argument("--calibration", type=Path, help="manifest of the version's training images for int8 "
                                                    "calibration (default: generated images)")
    p.add_argument("--held-out", type=Path, help="manifest of held-out images for the agreement check "
                                                 "(default: generated images)")
    p.add_argument("--min-agreement", type=share, default=0.99,
                   help="least top-1 agreement per task for a variant to serve ([0, 1])")
    p.add_argument("--precision", default=TRAINING_DEFAULTS["precision"], choices=PRECISIONS,
                   help="the PyTorch predictor's a variant must beat (as AESEMO_PREDICTOR_PRECISION)")
    p.set_defaults(func=cmd_export_runtime)

    p = sub.add_parser("demo", help="train on generated images and print predictions")
    p.add_argument("--workdir", default="aesemo-data/demo")
    p.add_argument("--epochs", type=int, default=8)
    p.set_defaults(func=cmd_demo)
