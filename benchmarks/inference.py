"""Inference speed and agreement per backbone and path, in one run.

    .venv/bin/python benchmarks/inference.py [--backbones vgg16,resnet18] [--repeats 3] [--agreement-images 200]
        [--start trained|heads] [--train-images 160] [--small-size 32 --small-epochs 45] [--full-epochs 3]
        [--batch-size 16] [--lr 1e-4 --full-lr 5e-5] [--work benchmarks/.inference]
    .venv/bin/python benchmarks/inference.py --precision-only    # the Predictor's "auto" choice per backbone

Paths: torch fp32 eager (default), today's Predictor (fp32, or on a CPU with native bf16 the
faster of fp32 and bf16 as timed when it loads: the line "Predictor precision auto" says which),
every OpenVINO variant model/runtime.py can export (int8 with every layer quantized, int8 with
the heads in float, both calibrated by NNCF with its QUANTIZATION options, and float32; the export
makes all three here, where a version stops at the first that serves) and, for comparison, int8
made with NNCF's default options on the same calibration images ("int8 nncf-default";
--no-default-int8 skips it). Prints ms
per image at batch 1 and 8, achieved GFLOP/s and its share of this CPU's matrix-multiply ceiling
(float32 for the float paths, int8 for int8), the speed-up over today's Predictor, and each
path's top-1 agreement per task and largest probability difference against torch fp32.

Agreement is measured on a network with confident outputs: an untrained network's probabilities
are near-uniform, so its top-1 flips between near ties and says nothing about the int8 path.
--start says how the benchmark makes one from generated images whose labels are visible
(model/synthetic.py; no pretrained weights can be downloaded here):
  trained (default): the whole two-branch network, every layer, trained from random weights on
      --train-images generated images: --small-epochs at --small-size px, which the CPU affords,
      then --full-epochs at 224 so that its outputs are confident at the measured size (AdamW in
      the benchmark's own loop: _train_version says why not model.train.train); saved as a version
      under --work, keyed by its settings, so reruns skip the training (vgg16: about 20 minutes
      on 2 cores). Speed and agreement are measured at 224; the network's own accuracy on the
      agreement images is printed too.
  heads: a random backbone with only the heads' last layers fitted (64 images): random deep
      features are tiny and alike between images, a pathological case for int8 rounding (even the
      bf16 Predictor flips some emotion near-ties). Quick: no training.
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

from _common import flops_per_image, interleaved_seconds
from model import runtime
from model.network import CrossBranchNet, NetConfig
from model.pipeline import init_version
from model.precision import cpu_has_native_bf16
from model.predictor import Predictor
from model.runtime import ProbabilityGraph, agreement
from model.synthetic import synthetic_image
from model.transforms import IMAGENET_STD, normalize
from model.version import META_FILE, WEIGHTS_FILE, load_version, save_version

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
    """A version of `backbone` whose every layer was trained on `images` (uint8, MEASURED_SIZE),
    copied into `folder` from the cache under --work when a run with these settings made it."""
    key = json.dumps([TRAINED_TASK, TRAINED_RECIPE, backbone, len(images), args.small_size, args.small_epochs,
                      args.full_epochs, args.lr, args.full_lr, args.batch_size], sort_keys=True)
    cached = Path(args.work) / f"trained-{backbone}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not (cached / META_FILE).exists():
        _train_version(str(cached), backbone, images, labels, args)
    for name in (META_FILE, WEIGHTS_FILE):
        shutil.copy(cached / name, Path(folder) / name)


# Why the benchmark trains with its own loop rather than model.train.train: a vgg16 from random
# weights (no BatchNorm, three 4096-wide FC layers with dropout) trained by the product's SGD does
# not learn the 8-class emotion task in a CPU's budget: at lr 0.01 its emotion branch died (held-out
# 0.08, one class for every image), at lr 0.001 it stood at 0.15 after 8 epochs. AdamW at 1e-4 learns
# it at --small-size (45 epochs of 160 images at 32 px: 0.84 on its validation images), but a network
# trained only at 32 px is unsure at 224 (median emotion margin 0.03); --full-epochs at the measured
# size then make it confident there (progressive resizing). The product itself starts from ImageNet.
TRAINED_RECIPE = "adamw, small then full size, bf16 autocast"


def _train_version(folder: str, backbone: str, images: torch.Tensor, labels: dict, args) -> None:
    started = time.perf_counter()
    torch.manual_seed(0)
    model = CrossBranchNet(NetConfig(backbone=backbone)).to(memory_format=torch.channels_last)
    pixel_mean = tuple((images.float() / 255).mean((0, 2, 3)).tolist())
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    small = torch.nn.functional.interpolate(images.float(), size=(args.small_size,) * 2, mode="bilinear",
                                            antialias=True, align_corners=False).round().clamp(0, 255)
    _fit(model, optimiser, normalize(small.to(torch.uint8), pixel_mean, IMAGENET_STD), labels, args.small_epochs,
         args.batch_size)
    for group in optimiser.param_groups:
        group["lr"] = args.full_lr
    _fit(model, optimiser, normalize(images, pixel_mean, IMAGENET_STD), labels, args.full_epochs, args.batch_size)
    print(f"{backbone}: trained {args.small_epochs} epochs at {args.small_size} px and {args.full_epochs} at "
          f"{MEASURED_SIZE} on {len(images)} images ({TRAINED_RECIPE}), {time.perf_counter() - started:.0f} s",
          flush=True)
    save_version(folder, model.to(memory_format=torch.contiguous_format),
                 {"init": "random", "trained": True, "pixel_mean": list(pixel_mean), "pixel_std": list(IMAGENET_STD),
                  "train_size": MEASURED_SIZE, "crop_size": MEASURED_SIZE,
                  "training": {"seconds": round(time.perf_counter() - started, 1), "recipe": TRAINED_RECIPE,
                               "small_size": args.small_size, "small_epochs": args.small_epochs,
                               "full_epochs": args.full_epochs, "lr": args.lr, "full_lr": args.full_lr,
                               "batch_size": args.batch_size}})


def _fit(model, optimiser, inputs: torch.Tensor, labels: dict, epochs: int, batch_size: int) -> None:
    """`epochs` passes of summed cross-entropy over both tasks, in bf16 autocast where the CPU has it."""
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_native_bf16())
    for _ in range(epochs):
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), batch_size):
            rows = order[start:start + batch_size]
            with autocast:
                outputs = model(inputs[rows].contiguous(memory_format=torch.channels_last))
            loss = sum(torch.nn.functional.cross_entropy(output.float(), labels[task][rows])
                       for task, output in zip(("aesthetic", "emotion"), outputs))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()


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
        paths[variant] = (loaded.predict_tensors, "int8" if variant in runtime.QUANTIZATION else "fp32")
    if calibration is not None and "error" not in record["variants"].get(runtime.FP32, {"error": ""}):
        paths["int8 nncf-default"] = (nncf_default_int8(folder, calibration), "int8")
    return paths


def outputs_of(paths: dict, images: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Each path's probabilities per task on `images`, run in batches of 8."""
    outputs = {name: [run(images[i:i + 8]) for i in range(0, len(images), 8)] for name, (run, _) in paths.items()}
    return {name: {task: torch.cat([part[task] for part in parts]) for task in ("aesthetic", "emotion")}
            for name, parts in outputs.items()}


def agreements(joined: dict, margin: float) -> tuple[dict, dict]:
    """Each path's outputs (`outputs_of`) against torch fp32's: over all images, and over those
    whose fp32 top-1 margin (largest minus second probability, in both tasks) is at least `margin`."""
    reference = joined["torch fp32"]
    clear = torch.ones(len(reference["aesthetic"]), dtype=torch.bool)
    for probabilities in reference.values():
        top2 = probabilities.topk(2, dim=1).values
        clear &= (top2[:, 0] - top2[:, 1]) >= margin
    over_all = {name: agreement(joined[name], reference) for name in joined}
    # a network unsure of one task (a trained start's emotion near chance) can leave no clear image
    over_clear = {name: agreement({t: p[clear] for t, p in joined[name].items()},
                                  {t: p[clear] for t, p in reference.items()}) if clear.any()
                  else {"top1": {}, "max_prob_diff": float("nan")} for name in joined}
    margins = torch.stack([p.topk(2, dim=1).values.diff(dim=1).abs().squeeze(1) for p in reference.values()])
    return over_all, {"count": int(clear.sum()), "median_margin": float(margins.min(0).values.median()),
                      **over_clear}


def accuracy(probabilities: dict[str, torch.Tensor], labels: dict) -> dict[str, float]:
    """Top-1 accuracy per task against the generated images' own labels: how much the network
    knows, beside how well the other paths agree with it."""
    return {task: float((probabilities[task].argmax(1) == labels[task]).float().mean()) for task in labels}


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
        held_out, held_out_labels = labelled_images(count, MEASURED_SIZE, seed=1)
        print(f"{backbone}: start {args.start} ({len(training)} generated training images) "
              f"{time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        record = runtime.export_runtime(tmp, calibration=training[:runtime.CALIBRATION_IMAGES], held_out=held_out[:32],
                                        make_all=True)
        print(f"{backbone}: export + calibration + agreement check {time.perf_counter() - started:.0f} s; "
              f"serving {record['serving']} ({record['reason']})")
        for variant, found in record["variants"].items():
            if "quantization" in found:
                print(f"{backbone}: {variant} made with {found['quantization']}")
        paths = paths_of(tmp, record, None if args.no_default_int8 else training[:runtime.CALIBRATION_IMAGES])
        flops = flops_per_image(load_version(tmp)[0].eval())
        joined = outputs_of(paths, held_out)
        over_all, over_clear = agreements(joined, margin)
        print(f"{backbone}: torch fp32 accuracy on the {count} agreement images: "
              + ", ".join(f"{task} {share:.3f}" for task, share in
                          accuracy(joined["torch fp32"], held_out_labels).items()))
        for name in paths:
            print(f"{backbone:<19} agreement {name:<25} all {count}: {_agreed(over_all[name])} | "
                  f"fp32 margin >= {margin} ({over_clear['count']}, median margin "
              f"{over_clear['median_margin']:.2f}): {_agreed(over_clear[name])}")
        for batch in batches:
            images = held_out[:batch].contiguous()
            seconds = interleaved_seconds({name: (lambda run=run, batch=images: run(batch)) for name, (run, _) in paths.items()},
                                          repeats)
            baseline = next(v for k, v in seconds.items() if k.startswith("predictor"))
            for name, (_, precision) in paths.items():
                per_image = seconds[name] / batch
                rate = flops / per_image / 1e9
                print(f"{backbone:<19} batch {batch} {name:<25} {per_image * 1e3:8.1f} ms/image "
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
    parser.add_argument("--start", choices=("trained", "heads"), default="trained",
                        help="trained: every layer trained on generated images; heads: random backbone, "
                             "heads' last layers fitted (see the module's docstring)")
    parser.add_argument("--train-images", type=int, default=160, help="--start trained: generated images")
    parser.add_argument("--small-size", type=int, default=32, help="--start trained: size of the first epochs")
    parser.add_argument("--small-epochs", type=int, default=45, help="--start trained: epochs at --small-size")
    parser.add_argument("--full-epochs", type=int, default=3, help="--start trained: epochs at 224 after them")
    parser.add_argument("--batch-size", type=int, default=16, help="--start trained")
    parser.add_argument("--lr", type=float, default=1e-4, help="--start trained: AdamW learning rate")
    parser.add_argument("--full-lr", type=float, default=5e-5, help="--start trained: AdamW lr of the epochs at 224")
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
