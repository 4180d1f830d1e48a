"""A faster CPU path for a version: the network exported to OpenVINO, int8 and float32.

The exported graph takes the uint8 images the Predictor prepares and returns both tasks'
probabilities (normalisation and softmax inside, two outputs), so it is a drop-in for
`Predictor.predict_tensors`. Variants are written beside the safetensors with their sha256 in
`runtime.json`, which also records, per variant, its top-1 agreement per task and its largest
probability difference against the float32 PyTorch outputs, measured when it was made. Variants
are made fastest first (every layer int8, int8 with the heads in float, float32) until one agrees
and beats the PyTorch predictor; a variant below the agreement threshold is never served; when
none passes, the PyTorch predictor serves and `runtime.json` says why. The PyTorch predictor
stays the reference and the fallback.

Pure PyTorch + OpenVINO: nothing here knows Flask, Redis or Label Studio.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .agreement_rule import AgreementRule, agreement_rule
from .classes import TASKS
from .errors import VersionError
from .files import write_text_atomically
from .heldout import HELDOUT_SPLIT
from .network import CrossBranchNet
from .predictor import Predictor, PredictorBase
from .transforms import normalize
from .version import RUNTIME_FILE, checked_file, load_version, read_meta, read_version_json, shown_path

log = logging.getLogger(__name__)

PYTORCH = "pytorch"
INT8 = "openvino-int8"                        # every layer int8
INT8_FLOAT_HEADS = "openvino-int8-float-heads"  # the heads' fully connected layers left in float
FP32 = "openvino-fp32"
# made and checked in this order, fastest first; the first that agrees and beats the PyTorch
# predictor serves and those after it are not made (vgg16: each costs a minute and up to 1 GB)
VARIANTS = (INT8, INT8_FLOAT_HEADS, FP32)
DEFAULT_THRESHOLD = 0.99
RUNTIME_FORMAT = 1
# training images int8 is calibrated on at most: with global min/max activation ranges, more images
# clip fewer held-out activations (resnet18 emotion agreement 0.990 with 32, 0.995 with 64; docs/benchmarks/inference.md)
CALIBRATION_IMAGES = 64
# a version's own held-out images the agreement check reads at most: 32 cannot tell 99 % from 94 %
# (benchmarks/inference.py, vgg16 int8: 32 of 32 agreed, 187 of 200)
HELD_OUT_IMAGES = 200
TIMED_IMAGES = 16           # per path, after one warm-up batch: enough to rank paths 10 % apart
EXPORT_LOCK_FILE = ".runtime.lock"
# an export writes its variants here, inside the version folder, and moves them out when done
WORK_FOLDER_PREFIX = ".runtime-"


def runtime_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class ProbabilityGraph(nn.Module):
    """uint8 images -> (aesthetic, emotion) probabilities: what is exported."""

    def __init__(self, model: CrossBranchNet, meta: dict):
        super().__init__()
        self.model = model.eval()
        mean, std = meta["pixel_mean"], meta.get("pixel_std", (0.229, 0.224, 0.225))
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        aesthetic, emotion = self.model(normalize(images, self.mean, self.std))
        return torch.softmax(aesthetic, dim=1), torch.softmax(emotion, dim=1)


def generated_images(count: int, size: int, seed: int = 0, chunk: int = 64) -> torch.Tensor:
    """uint8 (count, 3, size, size) smooth random images: a stand-in when a version has no
    images of its own (noise alone would leave activations unlike real photographs'). Made
    `chunk` at a time: the float intermediates are 8 times the uint8 result's size."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, count, chunk):
        coarse = torch.rand(min(chunk, count - start), 3, 8, 8, generator=generator)
        smooth = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        noise = torch.randn(smooth.shape, generator=generator) * 0.05
        parts.append(((smooth + noise).clamp(0, 1) * 255).to(torch.uint8))
    return torch.cat(parts) if parts else torch.zeros(0, 3, size, size, dtype=torch.uint8)


def manifest_images(path: str | Path, folder: str | Path, limit: int = CALIBRATION_IMAGES,
                    split: str | None = None, exclude_split: str | None = None) -> torch.Tensor | None:
    """The first `limit` images of a manifest (of one split, or all but one split) as the uint8
    batch the version's network reads: a version's own training (calibration) or held-out
    (agreement) images; None when no row is left."""
    from .images import open_image
    from .manifest import read_manifest
    from .predictor import PredictorBase

    shape = PredictorBase(folder, read_meta(folder))
    rows = [row for row in read_manifest(path).rows
            if (split is None or row.split == split) and (exclude_split is None or row.split != exclude_split)]
    if not rows:
        return None
    return torch.stack([shape.prepare(open_image(row.image, max_pixels=shape.max_pixels)) for row in rows[:limit]])


def export_from_job_manifest(folder: str | Path, manifest: str | Path, threshold: float = DEFAULT_THRESHOLD,
                             precision: str = "auto") -> dict:
    """A trained version's runtime (`export_from_manifest`), made in a child process under the
    folder's lock (model/export_process.py)."""
    from .export_process import export_in_child
    return export_once(folder, lambda: export_in_child(folder, export_from_manifest, manifest=str(manifest),
                                                       threshold=threshold, precision=precision))


def export_from_manifest(folder: str | Path, manifest: str | Path, threshold: float = DEFAULT_THRESHOLD,
                         precision: str = "auto") -> dict:
    """A trained version's runtime, int8 calibrated on its training rows and checked on its
    held-out rows ("split": "heldout"); generated images stand in for a side with no rows, and
    runtime.json's "images" says which were used."""
    calibration = manifest_images(manifest, folder, exclude_split=HELDOUT_SPLIT)
    held_out = manifest_images(manifest, folder, limit=HELD_OUT_IMAGES, split=HELDOUT_SPLIT)
    return export_runtime(folder, calibration, held_out, threshold, precision=precision)


def export_once(folder: str | Path, make) -> dict:
    """runtime.json of the version's weights: read when there, else `make()` under a file lock,
    so that of several processes one exports and the others wait, then read its record. The work
    folders of exports that were killed are removed under the lock: none of them is running."""
    with open(Path(folder) / EXPORT_LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            discard_unfinished_exports(folder)
            record = read_runtime(folder)
            return record if record is not None else make()
        finally:
            discard_unfinished_exports(folder)


def discard_unfinished_exports(folder: str | Path) -> None:
    for work in Path(folder).glob(f"{WORK_FOLDER_PREFIX}*"):
        shutil.rmtree(work, ignore_errors=True)


def agreement(outputs: dict[str, np.ndarray], reference: dict[str, torch.Tensor]) -> dict:
    """Top-1 agreement per task (share and count of images) and the largest probability
    difference, against the reference."""
    result = {"top1": {}, "agreeing": {}, "max_prob_diff": 0.0}
    for task in TASKS:
        got, want = torch.as_tensor(outputs[task]).float(), reference[task]
        same = got.argmax(1) == want.argmax(1)
        result["top1"][task], result["agreeing"][task] = float(same.float().mean()), int(same.sum())
        result["max_prob_diff"] = max(result["max_prob_diff"], float((got - want).abs().max()))
    return result


def export_runtime(folder: str | Path, calibration: torch.Tensor | None = None,
                   held_out: torch.Tensor | None = None, threshold: float = DEFAULT_THRESHOLD,
                   variants: Sequence[str] = VARIANTS, precision: str = "auto", make_all: bool = False) -> dict:
    """Export, check and record the variants of a version; returns what `runtime.json` holds.
    `calibration` and `held_out` are uint8 (N, 3, crop, crop) batches: the version's own
    training and held-out images where the caller has them, generated ones otherwise (as many
    as `agreement_rule` says). `precision` is the PyTorch predictor's
    (AESEMO_PREDICTOR_PRECISION), whose speed a variant must beat. Variants after the one that
    serves are recorded as skipped, unless `make_all` (benchmarks). The variants are made in a
    work folder and moved beside the weights when all are made; runtime.json is written last."""
    decline_telemetry()
    import openvino as ov

    folder = Path(folder)
    model, meta = load_version(folder)
    graph = ProbabilityGraph(model, meta)
    crop = int(meta.get("crop_size", 224))
    sources = {"calibration": "training" if calibration is not None else "generated",
               "held_out": "held-out" if held_out is not None else "generated"}
    calibration = calibration if calibration is not None else generated_images(CALIBRATION_IMAGES, crop, seed=1)
    # a version's own images are as many as it has; generated ones, as many as the check needs
    rule = agreement_rule(threshold) if held_out is None else None
    held_out = held_out if held_out is not None else generated_images(rule.images, crop, seed=2)
    # an admin reading "agreement 1.0000" should know on how many images: 32 cannot tell 97 % from 100 %
    check = AgreementCheck(threshold, rule, f"{len(held_out)} {sources['held_out']} images")
    reference = _reference(graph, held_out)
    example = torch.zeros(1, 3, crop, crop, dtype=torch.uint8)
    with torch.no_grad():
        converted = ov.convert_model(graph, example_input=example, input=[ov.PartialShape([-1, 3, crop, crop])])
    record = {"format": RUNTIME_FORMAT, "weights_sha256": meta["weights_sha256"], "threshold": threshold,
              "images": {"calibration": [sources["calibration"], len(calibration)],
                         "held_out": [sources["held_out"], len(held_out)]},
              **({"agreement_rule": asdict(rule)} if rule else {}), "openvino": ov.__version__, "variants": {}}
    # a variant must also beat the PyTorch predictor here, in the precision it serves in: on a CPU
    # with native bf16 a bf16 predictor is faster than OpenVINO in f32 (vgg16: 409 vs 570 ms/image)
    record["pytorch_ms_per_image"], record["pytorch_precision"] = pytorch_ms_per_image(folder, held_out, precision)
    work = Path(tempfile.mkdtemp(prefix=WORK_FOLDER_PREFIX, dir=folder))
    try:
        serving, reasons = PYTORCH, []
        for name in variants:
            if serving != PYTORCH and not make_all:
                record["variants"][name] = {"skipped": f"{serving} serves"}
                continue
            record["variants"][name] = found = _make_variant(work, name, converted, calibration, held_out, reference)
            if serving != PYTORCH:
                continue  # made for a benchmark's figures only
            why_not = _why_not_served(name, found, check, record["pytorch_ms_per_image"],
                                      record["pytorch_precision"]["dtype"])
            if why_not is None:
                serving, reasons = name, [_why_served(name, found, check, record["pytorch_ms_per_image"]), *reasons]
            else:
                reasons.append(why_not)
        record["serving"], record["reason"] = serving, "; ".join(reasons) or "no runtime variant made"
        _move_made_files(work, folder, record["variants"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_text_atomically(folder / RUNTIME_FILE, json.dumps(record, indent=2) + "\n")
    log.info("runtime of %s: %s serves (%s)", folder, record["serving"], record["reason"])
    return record


def decline_telemetry() -> None:
    """Answer OpenVINO's and NNCF's usage telemetry consent check with "declined": otherwise
    converting and quantizing fork processes that post usage data to the internet (and that a
    killed export would leave behind)."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED


def _move_made_files(work: Path, folder: Path, variants: dict) -> None:
    for found in variants.values():
        for name in found.get("files", {}):
            os.replace(work / name, folder / name)


@dataclass(frozen=True)
class AgreementCheck:
    """When a variant agrees enough: on a version's own images, a share of at least `threshold`
    per task; on generated ones, at least `rule.least_agreeing` of `rule.images` per task."""
    threshold: float
    rule: AgreementRule | None
    checked_on: str

    def passes(self, found: dict) -> bool:
        if self.rule is not None:
            return all(self.rule.passes(count) for count in found["agreeing"].values())
        return min(found["top1"].values()) >= self.threshold

    def describe(self, found: dict) -> str:
        worst = min(found["top1"].values())
        if self.rule is not None:
            verdict = "passes" if self.passes(found) else "fails"
            return (f"top-1 agreement {worst:.4f} ({min(found['agreeing'].values())} of {self.rule.images}) on "
                    f"{self.checked_on}: {verdict} the check ({self.rule.describe()})")
        sign = ">=" if self.passes(found) else "<"
        return f"top-1 agreement {worst:.4f} {sign} {self.threshold} on {self.checked_on}"


def _reference(graph: ProbabilityGraph, images: torch.Tensor) -> dict[str, torch.Tensor]:
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), 8):
            outputs.append(graph(images[start:start + 8]))
    return {task: torch.cat([o[i] for o in outputs]) for i, task in enumerate(TASKS)}


def _make_variant(work: Path, name: str, converted, calibration: torch.Tensor, held_out: torch.Tensor,
                  reference: dict) -> dict:
    """Write one variant's files into `work` and measure it; a failure is recorded, never raised."""
    import openvino as ov

    try:
        network = _quantized(converted, calibration, QUANTIZATION[name]) if name in QUANTIZATION else converted
        xml = work / f"{name}.xml"
        ov.save_model(network, xml, compress_to_fp16=False)
        files = {path.name: checked_file(path) for path in (xml, xml.with_suffix(".bin"))}
        compiled = _compile(xml)
        outputs = _run_batches(compiled, held_out)
        speed = ms_per_image(lambda batch: compiled(batch.numpy()), held_out)
        made_by = {"quantization": dict(QUANTIZATION[name])} if name in QUANTIZATION else {}
        return {"files": files, **made_by, **agreement(outputs, reference), "ms_per_image": speed}
    except Exception as exc:  # any exporter failure means: serve PyTorch, say why
        log.warning("runtime variant %s of %s failed: %s", name, work.parent, exc)
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


# How each int8 variant is made, recorded in runtime.json beside its figures. Measured with
# benchmarks/inference.py (docs/benchmarks/inference.md): NNCF's default activation ranges (the mean of
# each calibration image's min/max) clip the largest activations, which moved the emotion top-1 of
# a random network's images with close features; the global min/max over the calibration images
# does not. On a trained vgg16 every layer in int8 agreed on 200 of 200 images, 2.23x the bf16
# Predictor at batch 1 and 8, with a quarter of the weights' size (258 vs 942 MiB); the heads'
# fully connected layers in float (1.55x at batch 1, 2.15x at batch 8) are the fallback for a
# network whose close outputs the int8 heads flip (a random resnet18: 0.975 -> 0.990 agreement).
_INT8_OPTIONS = {"tool": "nncf", "preset": "performance", "activations_range": "minmax",
                 "fast_bias_correction": True}
QUANTIZATION = {INT8: {**_INT8_OPTIONS, "float_layers": []},
                INT8_FLOAT_HEADS: {**_INT8_OPTIONS, "float_layers": ["MatMul"]}}


def _quantized(converted, calibration: torch.Tensor, options: dict):
    import nncf
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    batches = [calibration[i:i + 1].numpy() for i in range(len(calibration))]
    return nncf.quantize(
        converted, nncf.Dataset(batches), subset_size=len(batches), model_type=None,
        preset=nncf.QuantizationPreset.PERFORMANCE, fast_bias_correction=options["fast_bias_correction"],
        ignored_scope=nncf.IgnoredScope(types=options["float_layers"], validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX))


def pytorch_ms_per_image(folder: Path, images: torch.Tensor, precision: str = "auto") -> tuple[float, dict]:
    """What the PyTorch predictor takes per image here, in the precision it would serve in (for
    "auto" the same measured choice as the serving process's, cached per process), and that choice."""
    predictor = Predictor(folder, device="cpu", precision=precision)
    chosen = {"dtype": predictor.precision.name, "reason": predictor.precision.reason,
              "ms_per_image": predictor.precision.ms_per_image}
    return ms_per_image(predictor.predict_tensors, images), chosen


def ms_per_image(predict, images: torch.Tensor, batch: int = 8) -> float:
    """Milliseconds per image of `predict` on batches of `batch`, after one warm-up batch."""
    timed = images[:TIMED_IMAGES]
    predict(timed[:batch])
    started = time.perf_counter()
    for start in range(0, len(timed), batch):
        predict(timed[start:start + batch])
    return round((time.perf_counter() - started) * 1000 / max(len(timed), 1), 2)


def _why_not_served(name: str, found: dict, check: AgreementCheck, pytorch_ms: float | None,
                    pytorch_dtype: str) -> str | None:
    """None when the variant may serve: it agrees with float32 PyTorch on both tasks and is faster
    than the PyTorch predictor on this machine; else why not."""
    if "error" in found:
        return f"{name} failed: {found['error']}"
    if not check.passes(found):
        return f"{name}: {check.describe(found)}"
    speed = found.get("ms_per_image")
    if pytorch_ms is not None and speed is not None and speed >= pytorch_ms:
        return (f"{name}: agrees, but {speed:.1f} ms/image is not faster than the PyTorch "
                f"predictor's {pytorch_ms:.1f} (in {pytorch_dtype or 'its precision'})")
    return None


def _why_served(name: str, found: dict, check: AgreementCheck, pytorch_ms: float | None) -> str:
    speed = found.get("ms_per_image")
    faster = f", {speed:.1f} vs PyTorch's {pytorch_ms:.1f} ms/image" if speed and pytorch_ms else ""
    return (f"{name}: {check.describe(found)} on both tasks, max probability difference "
            f"{found['max_prob_diff']:.4f}{faster}")


def _compile(xml: Path):
    import openvino as ov

    # OpenVINO computes in bf16 by default on CPUs with native bf16; f32 keeps the float parts of
    # every variant what their names say (and what the agreement check measured)
    return ov.Core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_PRECISION_HINT": "f32"})


def _run_batches(compiled, images: torch.Tensor, batch: int = 8) -> dict[str, np.ndarray]:
    parts = [compiled(images[start:start + batch].numpy()) for start in range(0, len(images), batch)]
    return {task: np.concatenate([p[compiled.output(i)] for p in parts]) for i, task in enumerate(TASKS)}


def read_runtime(folder: str | Path) -> dict | None:
    """runtime.json when it exists and belongs to these weights; None otherwise (stale or absent)."""
    folder = Path(folder)
    path = folder / RUNTIME_FILE
    if not path.is_file():
        return None
    record = read_version_json(path)
    problem = runtime_problem(record)
    if problem:
        raise VersionError(f"{shown_path(path)}: {problem}")
    if record["weights_sha256"] != read_meta(folder)["weights_sha256"]:
        return None  # made for other weights: made again
    return record


def runtime_problem(record) -> str | None:
    if not isinstance(record, dict):
        return "must hold a JSON object"
    if record.get("format") != RUNTIME_FORMAT or not isinstance(record.get("weights_sha256"), str):
        return f"must have format {RUNTIME_FORMAT} and a weights_sha256"
    serving, variants = record.get("serving"), record.get("variants")
    if not isinstance(variants, dict) or serving not in (PYTORCH, *VARIANTS):
        return f"'serving' must be one of {(PYTORCH, *VARIANTS)} with 'variants' an object"
    if serving != PYTORCH:
        files = variants.get(serving, {}).get("files") if isinstance(variants.get(serving), dict) else None
        if not isinstance(files, dict) or set(files) != {f"{serving}.xml", f"{serving}.bin"}:
            return f"'variants.{serving}.files' must list {serving}.xml and {serving}.bin with their sha256"
    return None


class RuntimePredictor(PredictorBase):
    """Serves a version's checked OpenVINO variant; same interface as the PyTorch Predictor."""

    def __init__(self, folder: str | Path, record: dict, max_pixels: int | None = None, variant: str | None = None):
        folder = Path(folder)
        super().__init__(folder, read_meta(folder), max_pixels=max_pixels)
        self.path = variant or record["serving"]
        for name, sha256 in record["variants"][self.path]["files"].items():
            checked_file(folder / name, sha256)
        self._compiled = _compile(folder / f"{self.path}.xml")
        self.reason = record["reason"]
        log.info("runtime predictor for %s: %s", folder, self.path)

    def predict_tensors(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        # one infer request per call: the compiled model is shared by this process's threads
        request = self._compiled.create_infer_request()
        request.infer(batch.numpy())
        return {task: torch.from_numpy(request.get_output_tensor(i).data.copy()) for i, task in enumerate(TASKS)}
