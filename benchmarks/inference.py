"""Inference speed and agreement per backbone and path, in one run.

    .venv/bin/python benchmarks/inference.py [--backbones vgg16,resnet18] [--repeats 3] [--agreement-images 200]
        [--start trained|heads] [--train-images 128] [--train-size 64 --crop 56] [--epochs 5]
        [--batch-size 4] [--train-precision auto|fp32|bf16] [--work benchmarks/.inference]
    .venv/bin/python benchmarks/inference.py --precision-only    # the Predictor's "auto" choice per backbone

Paths: torch fp32 eager (default), today's Predictor (fp32, or on a CPU with native bf16 the
faster of fp32 and bf16 as timed when it loads: the line "Predictor precision auto" says which),
each OpenVINO variant model/runtime.py exports (float32, int8 calibrated by NNCF with its
QUANTIZATION options) and, for comparison, int8 made with NNCF's default options on the same
calibration images ("int8 nncf-default"; --no-default-int8 skips it). Prints ms
per image at batch 1 and 8, achieved GFLOP/s and its share of this CPU's matrix-multiply ceiling
(float32 for the float paths, int8 for int8), the speed-up over today's Predictor, and each
path's top-1 agreement per task and largest probability difference against torch fp32.

Agreement is measured on a network with confident outputs: an untrained network's probabilities
are near-uniform, so its top-1 flips between near ties and says nothing about the int8 path.
--start says how the benchmark makes one from generated images whose labels are visible
(model/synthetic.py; no pretrained weights can be downloaded here):
  trained: the whole two-branch network, every layer, trained by model.train.train on
      --train-images generated images at a reduced resolution the CPU affords (--train-size resize,
      --crop crop, --epochs), like a version a project trains; saved as a version under --work,
      keyed by its settings, so reruns skip the training. Speed and agreement are measured at 224.
  heads (default): a random backbone with only the heads' last layers fitted (64 images): random
      deep features are tiny and alike between images, a pathological case for int8 rounding.
      It stays the default because a vgg16 trained from random weights on this CPU has not yet
      learned the emotion task (5 epochs at 64/56 and 15 at 40/32 left it at chance, aesthetic 1.00),
      so its emotion agreement would compare near-ties too.
int8 is calibrated on the training images (at 224) and agreement is measured on other generated
images of the same kind.
Agreement is printed over all images and over those whose torch fp32 top-1 margin is at least
--margin (how many, in brackets). Times are interleaved (A, B, A, B...) so other load on the
machine falls on every path alike; compare ratios within one run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import flops_per_image, interleaved_seconds  # noqa: E402
from model import runtime  # noqa: E402
from model.dataset import TrainingData  # noqa: E402
from model.manifest import Row  # noqa: E402
from model.network import CrossBranchNet, NetConfig  # noqa: E402
from model.pipeline import init_version  # noqa: E402
from model.precision import cpu_has_native_bf16  # noqa: E402
from model.predictor import Predictor  # noqa: E402
from model.runtime import ProbabilityGraph, agreement  # noqa: E402
from model.synthetic import synthetic_image  # noqa: E402
from model.train import TrainConfig, train  # noqa: E402
from model.transforms import IMAGENET_STD, normalize  # noqa: E402
from model.version import META_FILE, WEIGHTS_FILE, load_version, save_version  # noqa: E402

HEAD_TRAINING_IMAGES = 64
HEAD_TRAINING_STEPS = 300
MEASURED_SIZE = 224          # every path is timed and compared at the product's crop
TRAINED_TASK = "synthetic_image: brightness, hue"   # part of the cached trained version's key


def matmul_ceiling(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """This CPU's float32 (GFLOP/s, torch.mm: MKL/oneDNN) and int8 (GOP/s, OpenVINO's own int8
    MatMul) matrix-multiply throughput on large square matrices: what each path could reach."""
    ops = 2 * size ** 3
    a, b = torch.randn(size, size), torch.randn(size, size)
    return {"fp32": ops / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9,
            "int8": ops / _best_seconds(_openvino_int8_matmul(size), repeats) / 1e9}


def _best_seconds(run, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _openvino_int8_matmul(size: int):
    """A one-MatMul OpenVINO model whose two inputs pass FakeQuantize (256 levels), as NNCF writes
    them: the CPU plugin runs it as an int8 x int8 GEMM (u8 x s8 with int32 accumulation)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    def quantized(node, low: float, high: float):
        return ops.fake_quantize(node, np.float32(low), np.float32(high), np.float32(low), np.float32(high), 256)

    activations = ops.parameter([size, size], np.float32)
    weights = ops.constant(np.random.default_rng(0).uniform(-1, 1, (size, size)).astype(np.float32))
    product = ops.matmul(quantized(activations, 0.0, 1.0), quantized(weights, -1.0, 1.0), False, False)
    compiled = ov.Core().compile_model(ov.Model([product], [activations]), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    data = np.random.default_rng(1).uniform(0, 1, (size, size)).astype(np.float32)
    return lambda: request.infer(data)


def labelled_images(count: int, size: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """uint8 (count, 3, size, size) generated images and their labels per task (model/synthetic.py)."""
    classes = NetConfig().classes
    n_a, n_e = len(classes["aesthetic"]), len(classes["emotion"])
    rng = random.Random(seed)
    pairs = [(i % n_a, (i // n_a) % n_e) for i in range(count)]
    images = [torch.from_numpy(np.asarray(synthetic_image(a, e, n_e, rng, size))).permute(2, 0, 1)
              for a, e in pairs]
    return torch.stack(images), {"aesthetic": torch.tensor([a for a, _ in pairs]),
                                 "emotion": torch.tensor([e for _, e in pairs])}


def confident_version(folder: str, backbone: str, images: torch.Tensor, labels: dict) -> None:
    """A version of `backbone` whose heads' last layers are trained on `images`, so that its
    outputs are confident (see the module's docstring)."""
    init_version(folder, NetConfig(backbone=backbone), use_pretrained=False)
    model, meta = load_version(folder)
    model.eval()
    heads = {"aesthetic": model.branch_a.head, "emotion": model.branch_e.head}
    features = _last_layer_inputs(model, meta, images, heads)
    for task, head in heads.items():
        _fit_last_layer(head[-1], features[task], labels[task])
    save_version(folder, model, {key: meta[key] for key in ("init", "pixel_mean", "pixel_std", "trained")})


def trained_version(folder: str, backbone: str, images: torch.Tensor, labels: dict, args) -> None:
    """A version of `backbone` whose every layer was trained on `images` (uint8, MEASURED_SIZE)
    resized to --train-size, copied into `folder` from the cache under --work when a run with
    these settings made it."""
    config = TrainConfig(epochs=args.epochs, patience=0, finetune="full", train_size=args.train_size,
                         crop_size=args.crop, lr=args.lr, batch_size=args.batch_size, seed=0,
                         precision=args.train_precision)
    key = json.dumps([TRAINED_TASK, backbone, len(images), args.epochs, args.train_size, args.crop, args.lr,
                      args.batch_size, args.train_precision], sort_keys=True)
    cached = Path(args.work) / f"trained-{backbone}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not (cached / META_FILE).exists():
        _train_version(str(cached), backbone, images, labels, config)
    for name in (META_FILE, WEIGHTS_FILE):
        shutil.copy(cached / name, Path(folder) / name)


def _train_version(folder: str, backbone: str, images: torch.Tensor, labels: dict, config: TrainConfig) -> None:
    started = time.perf_counter()
    model = CrossBranchNet(NetConfig(backbone=backbone))
    result = train(model, _training_data(images, labels, config.train_size), config)
    scores = ", ".join(f"{task} {m['accuracy']:.2f}" for task, m in result.metrics.items() if m)
    print(f"{backbone}: trained {result.epochs_run} epochs on {result.train_size} images at "
          f"{config.train_size}/{config.crop_size} in {result.precision}: held-out ({result.val_size}) accuracy "
          f"{scores}, {time.perf_counter() - started:.0f} s", flush=True)
    # crop_size is the measured one: the network is convolutional with adaptive pooling, and the
    # export, the Predictor and the agreement images all work at MEASURED_SIZE
    save_version(folder, model, {"init": "random", "trained": True, "pixel_mean": list(result.pixel_mean),
                                 "pixel_std": list(IMAGENET_STD), "train_size": MEASURED_SIZE,
                                 "crop_size": MEASURED_SIZE,
                                 "training": {"seconds": result.seconds, "device": result.device,
                                              "precision": result.precision, "epochs_run": result.epochs_run,
                                              "config": vars(config)}})


def _training_data(images: torch.Tensor, labels: dict, size: int) -> TrainingData:
    resized = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                                              align_corners=False).round().clamp(0, 255).to(torch.uint8)
    classes = NetConfig().classes
    targets = {task: torch.nn.functional.one_hot(labels[task], len(classes[task])).float() for task in labels}
    rows = [Row(line=i + 1, image=Path(f"generated{i:04d}.png"), targets={t: targets[t][i] for t in targets})
            for i in range(len(images))]
    return TrainingData(images=resized, targets=targets, masks={t: torch.ones(len(images)) for t in targets},
                        weights=torch.ones(len(images)), rows=rows)


def _last_layer_inputs(model, meta: dict, images: torch.Tensor, heads: dict) -> dict[str, torch.Tensor]:
    captured = {task: [] for task in heads}
    hooks = [head[-1].register_forward_pre_hook(lambda _, args, task=task: captured[task].append(args[0]))
             for task, head in heads.items()]
    with torch.no_grad():
        for start in range(0, len(images), 8):
            model(normalize(images[start:start + 8], tuple(meta["pixel_mean"]), tuple(meta["pixel_std"])))
    for hook in hooks:
        hook.remove()
    return {task: torch.cat(parts) for task, parts in captured.items()}


def _fit_last_layer(layer: torch.nn.Linear, features: torch.Tensor, targets: torch.Tensor) -> None:
    # features scaled by one number (per-feature scaling would give near-constant features huge
    # weights that amplify rounding), weight decay keeps the logits' margins like a trained net's
    scale = float(features.std()) + 1e-12
    fitted = torch.nn.Linear(layer.in_features, layer.out_features)
    optimiser = torch.optim.AdamW(fitted.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(HEAD_TRAINING_STEPS):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(fitted(features / scale), targets).backward()
        optimiser.step()
    with torch.no_grad():
        layer.weight.copy_(fitted.weight / scale)
        layer.bias.copy_(fitted.bias)


def nncf_default_int8(folder: str, calibration: torch.Tensor):
    """The float32 variant quantized with NNCF's default options (activation ranges: the mean of
    each image's min/max; every layer int8), on the same calibration images: what
    model/runtime.py's QUANTIZATION options are compared with in the same run."""
    import nncf
    import openvino as ov

    batches = [calibration[i:i + 1].numpy() for i in range(len(calibration))]
    started = time.perf_counter()
    network = nncf.quantize(ov.Core().read_model(Path(folder) / f"{runtime.FP32}.xml"), nncf.Dataset(batches),
                            subset_size=len(batches), model_type=None, preset=nncf.QuantizationPreset.PERFORMANCE)
    print(f"int8 with NNCF's defaults: quantized in {time.perf_counter() - started:.0f} s")
    compiled = ov.Core().compile_model(network, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                        "INFERENCE_PRECISION_HINT": "f32"})

    def predict(images):
        outputs = compiled(images.numpy())
        return {task: torch.from_numpy(outputs[compiled.output(i)]) for i, task in enumerate(("aesthetic", "emotion"))}
    return predict


def paths_of(folder: str, record: dict, calibration: torch.Tensor | None = None) -> dict:
    """name -> (predict(uint8 batch) -> {task: probabilities}, precision for the ceiling); with
    `calibration`, also int8 made with NNCF's defaults ("int8 nncf-default")."""
    model, meta = load_version(folder)
    graph = ProbabilityGraph(model, meta)
    predictor = Predictor(folder)
    # the choice "auto" makes at load on this machine, and the two timings behind it
    print(f"  Predictor precision auto: {predictor.precision.describe()}")

    def default(images):
        with torch.no_grad():
            return dict(zip(("aesthetic", "emotion"), graph(images)))

    paths = {"torch fp32": (default, "fp32"),
             f"predictor {str(predictor.dtype)[6:]}": (predictor.predict_tensors, "fp32")}
    for variant, found in record["variants"].items():
        if "error" in found:
            print(f"  {variant}: export failed: {found['error']}")
            continue
        loaded = runtime.RuntimePredictor(folder, record, variant=variant)
        paths[variant] = (loaded.predict_tensors, "int8" if variant == runtime.INT8 else "fp32")
    if calibration is not None and "error" not in record["variants"].get(runtime.FP32, {"error": ""}):
        paths["int8 nncf-default"] = (nncf_default_int8(folder, calibration), "int8")
    return paths


def agreements(paths: dict, images: torch.Tensor, margin: float) -> tuple[dict, dict]:
    """Each path against torch fp32: over all images, and over those whose fp32 top-1 margin
    (largest minus second probability, in both tasks) is at least `margin`."""
    outputs = {name: [run(images[i:i + 8]) for i in range(0, len(images), 8)] for name, (run, _) in paths.items()}
    joined = {name: {task: torch.cat([part[task] for part in parts]) for task in ("aesthetic", "emotion")}
              for name, parts in outputs.items()}
    reference = joined["torch fp32"]
    clear = torch.ones(len(images), dtype=torch.bool)
    for probabilities in reference.values():
        top2 = probabilities.topk(2, dim=1).values
        clear &= (top2[:, 0] - top2[:, 1]) >= margin
    over_all = {name: agreement(joined[name], reference) for name in paths}
    # a network unsure of one task (a trained start's emotion near chance) can leave no clear image
    over_clear = {name: agreement({t: p[clear] for t, p in joined[name].items()},
                                  {t: p[clear] for t, p in reference.items()}) if clear.any()
                  else {"top1": {}, "max_prob_diff": float("nan")} for name in paths}
    margins = torch.stack([p.topk(2, dim=1).values.diff(dim=1).abs().squeeze(1) for p in reference.values()])
    return over_all, {"count": int(clear.sum()), "median_margin": float(margins.min(0).values.median()),
                      **over_clear}


def bench_backbone(backbone: str, batches: list[int], repeats: int, count: int, ceiling: dict,
                   margin: float, args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        if args.start == "heads":
            training, labels = labelled_images(HEAD_TRAINING_IMAGES, MEASURED_SIZE, seed=0)
            confident_version(tmp, backbone, training, labels)
        else:
            training, labels = labelled_images(args.train_images, MEASURED_SIZE, seed=0)
            trained_version(tmp, backbone, training, labels, args)
        held_out, _ = labelled_images(count, MEASURED_SIZE, seed=1)
        print(f"{backbone}: start {args.start} ({len(training)} generated training images) "
              f"{time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        record = runtime.export_runtime(tmp, calibration=training[:runtime.CALIBRATION_IMAGES], held_out=held_out[:32])
        print(f"{backbone}: export + calibration + agreement check {time.perf_counter() - started:.0f} s; "
              f"serving {record['serving']} ({record['reason']})")
        if "quantization" in record["variants"].get(runtime.INT8, {}):
            print(f"{backbone}: {runtime.INT8} made with {record['variants'][runtime.INT8]['quantization']}")
        paths = paths_of(tmp, record, None if args.no_default_int8 else training[:runtime.CALIBRATION_IMAGES])
        flops = flops_per_image(load_version(tmp)[0].eval())
        over_all, over_clear = agreements(paths, held_out, margin)
        for name in paths:
            print(f"{backbone:<19} agreement {name:<17} all {count}: {_agreed(over_all[name])} | "
                  f"fp32 margin >= {margin} ({over_clear['count']}, median margin "
              f"{over_clear['median_margin']:.2f}): {_agreed(over_clear[name])}")
        for batch in batches:
            images = held_out[:batch].contiguous()
            seconds = interleaved_seconds({name: (lambda run=run: run(images)) for name, (run, _) in paths.items()},
                                          repeats)
            baseline = next(v for k, v in seconds.items() if k.startswith("predictor"))
            for name, (_, precision) in paths.items():
                per_image = seconds[name] / batch
                rate = flops / per_image / 1e9
                print(f"{backbone:<19} batch {batch} {name:<17} {per_image * 1e3:8.1f} ms/image "
                      f"{rate:7.1f} GFLOP/s ({rate / ceiling[precision]:5.1%} of {precision} ceiling) "
                      f"| {baseline / seconds[name]:5.2f}x predictor | {flops / 1e9:.1f} GFLOP/image")


def _agreed(found: dict) -> str:
    if not found["top1"] or any(v != v for v in found["top1"].values()):
        return "-"
    return (f"top-1 A {found['top1']['aesthetic']:.3f} E {found['top1']['emotion']:.3f} "
            f"max prob diff {found['max_prob_diff']:.4f}")


def print_auto_precisions(backbones: list[str]) -> None:
    """What Predictor(precision="auto") picks for each backbone on this machine, and why."""
    print(f"{torch.get_num_threads()} threads, native CPU bf16: {cpu_has_native_bf16()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    for backbone in backbones:
        with tempfile.TemporaryDirectory() as tmp:
            init_version(tmp, NetConfig(backbone=backbone), use_pretrained=False)
            started = time.perf_counter()
            predictor = Predictor(tmp, device="cpu")
            print(f"{backbone:<19} auto -> {predictor.precision.describe()}; "
                  f"load with the check {time.perf_counter() - started:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="vgg16,resnet18,mobilenet_v3_small")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--agreement-images", type=int, default=200)
    parser.add_argument("--no-default-int8", action="store_true",
                        help="skip int8 made with NNCF's default options (the comparison row)")
    parser.add_argument("--margin", type=float, default=0.1, help="fp32 top-1 margin of the 'clear' images")
    # heads stays the default until a trained vgg16 learns emotion on the CPU (see the docstring)
    parser.add_argument("--start", choices=("trained", "heads"), default="heads",
                        help="trained: every layer trained on generated images; heads: random backbone, "
                             "heads' last layers fitted (see the module's docstring)")
    parser.add_argument("--train-images", type=int, default=128, help="--start trained: generated images")
    parser.add_argument("--train-size", type=int, default=64, help="--start trained: resize before the crop")
    parser.add_argument("--crop", type=int, default=56, help="--start trained: training crop")
    parser.add_argument("--epochs", type=int, default=5, help="--start trained")
    # small batches: a few hundred images in batches of 16 are too few SGD steps for a random vgg16
    parser.add_argument("--batch-size", type=int, default=4, help="--start trained")
    parser.add_argument("--train-precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="--start trained: TrainConfig.precision (auto times a training step first)")
    parser.add_argument("--lr", type=float, default=0.01, help="--start trained: SGD learning rate")
    parser.add_argument("--work", default=str(Path(__file__).resolve().parent / ".inference"),
                        help="--start trained: where trained versions are cached")
    parser.add_argument("--precision-only", action="store_true",
                        help="only the Predictor's 'auto' precision per backbone, with both timings")
    args = parser.parse_args()
    if args.precision_only:
        print_auto_precisions(args.backbones.split(","))
        return
    import openvino
    ceiling = matmul_ceiling()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, openvino {openvino.__version__}, "
          f"{torch.get_num_threads()} threads, native CPU bf16: {cpu_has_native_bf16()}, start {args.start}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"matmul ceiling (2048 x 2048): fp32 {ceiling['fp32']:.1f} GFLOP/s (torch.mm), "
          f"int8 {ceiling['int8']:.1f} GOP/s (OpenVINO int8 MatMul)")
    for backbone in args.backbones.split(","):
        bench_backbone(backbone, [int(b) for b in args.batches.split(",")], args.repeats,
                       args.agreement_images, ceiling, args.margin, args)


if __name__ == "__main__":
    main()
