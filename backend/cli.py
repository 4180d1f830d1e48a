"""The `aesemo` command line. Each subcommand parses its flags and calls one function."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from model.backbones import SPECS
from redis import RedisError

from model.errors import AesemoError
from model.limits import TRAINING_LIMITS, LimitError

from backend.core.settings import PRECISION_CHOICES

log = logging.getLogger("aesemo")


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


def cmd_stack(args) -> int:
    from backend.tools.stack import run_stack, stack_options
    return run_stack(stack_options(args.ls_port, args.backend_port, args.ls_venv))


def cmd_serve(args) -> int:
    from backend.http.server import serve
    serve(args.host, args.port, args.workers, args.threads)
    return 0


def _backend():
    from backend.core.redis_connection import connect
    from backend.service import Backend
    from backend.core.settings import load_settings
    settings = load_settings()
    return Backend(settings, connect(settings))


def _print_answer(answer) -> int:
    """A project command's answer, as the HTTP API gives it, printed as indented JSON."""
    print(json.dumps(answer, indent=2))
    return 0


def cmd_consensus(args) -> int:
    backend = _backend()
    if args.state:
        return _print_answer(backend.consensus_tasks(str(args.project), args.state))
    return _print_answer(backend.consensus_summary(str(args.project)))


def cmd_resync(args) -> int:
    return _print_answer(_backend().resync(str(args.project)))


def cmd_worker(args) -> int:
    from backend.training.worker import run_worker
    run_worker(args.queue, args.device, args.burst)
    return 0


def cmd_train_project(args) -> int:
    return _print_answer(_backend().train(str(args.project), _params(args), "command line"))


def _params(args) -> dict:
    return {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                              "backbone": args.backbone}.items() if v is not None}


def cmd_jobs(args) -> int:
    return _print_answer(_backend().jobs(str(args.project)))


def cmd_versions(args) -> int:
    return _print_answer(_backend().project_versions(str(args.project)))


def cmd_promote(args) -> int:
    return _print_answer(_backend().promote(str(args.project), args.version))


def cmd_rollback(args) -> int:
    if not args.yes:
        raise ValueError("aesemo rollback serves the base version to every annotator at once: add --yes to confirm")
    return _print_answer(_backend().roll_back(str(args.project)))


def cmd_refresh(args) -> int:
    return _print_answer(_backend().refresh(str(args.project)))


def cmd_refresh_jobs(args) -> int:
    return _print_answer(_backend().refresh_jobs(str(args.project)))


def cmd_base(args) -> int:
    from backend.core.redis_connection import connect
    from backend.core.settings import load_settings
    from backend.serving.registry import describe_base, register_base
    if args.action == "set" and not args.folder:
        raise ValueError("aesemo base set needs a trained version folder, or none")
    settings = load_settings()
    client = connect(settings)
    if args.action == "show":
        print(json.dumps(describe_base(client, settings), indent=2))
        return 0
    print(json.dumps(register_base(client, None if args.folder == "none" else Path(args.folder))))
    if settings.base_model is not None:
        log.warning("AESEMO_BASE_MODEL=%s is set and wins over this registration", settings.base_model)
    return 0


def cmd_redis(args) -> int:
    from backend.core.redis_connection import stop_unused_embedded_redis
    from backend.core.settings import load_settings
    settings = load_settings()
    if settings.redis_url:
        raise AesemoError("REDIS_URL is set: that Redis is not the embedded one, and not this command's to stop")
    print(json.dumps(stop_unused_embedded_redis(settings.data_dir)))
    return 0


def _share(text: str) -> float:
    """An argparse type for a share in [0, 1]: `--min-agreement 2` stops with one line naming it."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def _limited(name: str):
    """An argparse type for the training number `name`: its range is the HTTP API's and the
    settings' (model/limits.py), so `--lr inf` or `--epochs 0` stops with one line naming it."""
    limit = TRAINING_LIMITS[name]

    def parse(text: str):
        try:
            return limit.check(name, limit.kind(text))
        except ValueError as exc:
            message = str(exc) if isinstance(exc, LimitError) else f"{name} must be {limit.describe()}, got {text!r}"
            raise argparse.ArgumentTypeError(message) from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aesemo", description="Aesthetic and emotion suggestions for Label Studio")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.add_argument("--epochs", type=_limited("epochs"), default=10)
    p.add_argument("--batch-size", type=_limited("batch_size"), default=16)
    p.add_argument("--lr", type=_limited("lr"), default=1e-3)
    p.add_argument("--lam", type=_limited("lam"), default=0.25, help="weight of the emotion loss (lambda)")
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step", "constant"])
    p.add_argument("--val-fraction", type=_limited("val_fraction"), default=0.2)
    p.add_argument("--patience", type=_limited("patience"), default=3, help="early stopping; 0 switches it off")
    p.add_argument("--seed", type=_limited("seed"), default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--train-size", type=_limited("train_size"), default=256)
    p.add_argument("--crop-size", type=_limited("crop_size"), default=224)
    p.add_argument("--center-crop", action="store_true", help="evaluate and predict on a centre crop")
    p.add_argument("--class-balance", default="loss", choices=["loss", "sampling", "off"],
                   help="skewed labels: class weights in the loss (default), balanced batches, or neither")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="fp32 or bf16 autocast; auto: bf16 where a timed training step is clearly faster")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _net_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict both classes of images; one JSON object a line")
    p.add_argument("version", type=Path)
    p.add_argument("images", nargs="+")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
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
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    p.add_argument("--batch-size", type=_limited("batch_size"), default=32)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("info", help="a version's metadata as JSON")
    p.add_argument("version", type=Path)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("serve", help="run the Label Studio ML backend under gunicorn")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--workers", type=int, default=1, help="processes; each holds its own copy of the models")
    p.add_argument("--threads", type=int, default=4, help="threads per process, sharing its models")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("consensus", help="a project's consensus summary (or its tasks in one state)")
    p.add_argument("project", type=int)
    p.add_argument("--state", choices=["no_votes", "waiting", "agreed", "disputed"], default=None)
    p.set_defaults(func=cmd_consensus)

    p = sub.add_parser("resync", help="rebuild a project's votes from Label Studio's export")
    p.add_argument("project", type=int)
    p.set_defaults(func=cmd_resync)

    p = sub.add_parser("worker", help="run a worker for prediction-refresh and training jobs (RQ, no fork after CUDA init)")
    p.add_argument("--queue", default=None, help="training queue name (default: $AESEMO_QUEUE or training); the predict queue is $AESEMO_PREDICT_QUEUE")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--burst", action="store_true", help="stop when the queues are empty")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("train-project", help="ask for a training job for a Label Studio project")
    p.add_argument("project", type=int)
    p.add_argument("--epochs", type=_limited("epochs"), default=None)
    p.add_argument("--batch-size", type=_limited("batch_size"), default=None)
    p.add_argument("--lr", type=_limited("lr"), default=None)
    p.add_argument("--backbone", default=None, choices=sorted(SPECS))
    p.set_defaults(func=cmd_train_project)

    p = sub.add_parser("jobs", help="a project's training jobs")
    p.add_argument("project", type=int)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("versions", help="a project's model versions")
    p.add_argument("project", type=int)
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("promote", help="make a version current (also a rollback)")
    p.add_argument("project", type=int)
    p.add_argument("version")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="serve the project's base version again (registered base model, or untrained)")
    p.add_argument("project", type=int)
    p.add_argument("--yes", action="store_true", help="confirm: every annotator's suggestions come from the base")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("refresh", help="queue a refresh of the predictions of a project's unlabelled tasks "
                       "in Label Studio (merged into the pending one); a worker serves the predict queue")
    p.add_argument("project", type=int)
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser("refresh-jobs", help="a project's prediction-refresh jobs and their progress")
    p.add_argument("project", type=int)
    p.set_defaults(func=cmd_refresh_jobs)

    p = sub.add_parser("stack", help="Label Studio, the backend, a worker and a demo project, until Ctrl-C")
    p.add_argument("--ls-port", type=int, default=8080, help="Label Studio's port on 127.0.0.1")
    p.add_argument("--backend-port", type=int, default=9090, help="the backend's port on 127.0.0.1")
    p.add_argument("--ls-venv", default=None,
                   help="virtualenv holding Label Studio (default: $LS_VENV or .venv-ls; made when missing)")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("base", help="the deployment's base model: a trained version new projects start from")
    p.add_argument("action", choices=["set", "show"])
    p.add_argument("folder", nargs="?", default=None, help="set: a trained version folder, or none to unregister")
    p.set_defaults(func=cmd_base)

    p = sub.add_parser("redis", help="the data directory's embedded Redis (it also stops with its last user)")
    p.add_argument("action", choices=["stop"], help="stop: shut it down (append-only file fsynced) unless a serve, worker or stack uses it")
    p.set_defaults(func=cmd_redis)

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
    p.add_argument("--min-agreement", type=_share, default=0.99,
                   help="least top-1 agreement per task for a variant to serve ([0, 1])")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="the PyTorch predictor's a variant must beat (as AESEMO_PREDICTOR_PRECISION)")
    p.set_defaults(func=cmd_export_runtime)

    p = sub.add_parser("demo", help="train on generated images and print predictions")
    p.add_argument("--workdir", default="aesemo-data/demo")
    p.add_argument("--epochs", type=int, default=8)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="aesemo: %(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.INFO)  # its debug lines carry full URLs
    try:
        return args.func(args)
    except (AesemoError, ValueError, OSError, RedisError) as exc:
        print(f"aesemo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aesemo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
