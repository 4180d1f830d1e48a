"""The Predictor (channels_last, fp32 or bf16) against a plain fp32 eval forward of the same
version."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from model.network import CrossBranchNet, NetConfig
from model import precision as precision_module
from model import predictor as predictor_module
from model.precision import time_dtypes
from model.predictor import Predictor
from model.transforms import inference_tensor, normalize
from model.version import WEIGHTS_FILE, load_version, save_version
from precision_fakes import FakeTimings

# max abs difference of a class probability between the Predictor and the reference forward
FP32_PROB_TOL = 1e-4
BF16_PROB_TOL = 0.05

CROP = 64
TRAIN = 72
CLASSES = {"aesthetic": ("low", "high"), "emotion": ("calm", "joy", "anger", "fear")}
PIXEL_MEAN = [0.45, 0.5, 0.4]
PIXEL_STD = [0.25, 0.25, 0.25]
SPREAD = 0.75   # std of each class's centred logit over the test images (see `version`)


def make_images(count=6) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    images = []
    for i in range(count):
        base = rng.integers(0, 256, (3,))
        noise = rng.normal(0, 40 + 10 * i, (50 + 7 * i, 90 - 5 * i, 3))
        images.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB"))
    return images


def reference(model: CrossBranchNet, images, center_crop=False) -> dict[str, torch.Tensor]:
    batch = torch.stack([inference_tensor(im, CROP, center_crop, TRAIN) for im in images])
    with torch.no_grad():
        logits = model.eval()(normalize(batch, PIXEL_MEAN, PIXEL_STD))
    return {task: torch.softmax(out, dim=1) for task, out in zip(("aesthetic", "emotion"), logits)}


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    torch.manual_seed(0)
    model = CrossBranchNet(NetConfig(backbone="resnet18", num_groups=3, fc_width=32,
                                     aesthetic_classes=CLASSES["aesthetic"],
                                     emotion_classes=CLASSES["emotion"])).eval()
    # An untrained network gives near-uniform probabilities that hardly depend on the image;
    # rescale each last FC layer so that each class's logit spreads over the test images,
    # which makes "same output" a real check rather than "everything is 1/C". (The scale also
    # magnifies bf16 rounding, so the bf16 check is harder here than on a trained network.)
    images = make_images()
    batch = normalize(torch.stack([inference_tensor(im, CROP, False, TRAIN) for im in images]),
                      PIXEL_MEAN, PIXEL_STD)
    with torch.no_grad():
        logits = model(batch)
        for head, out in zip((model.branch_a.head[-1], model.branch_e.head[-1]), logits):
            # only differences between a sample's logits matter: centre them per sample, then
            # give each class zero mean and std SPREAD over the images
            centre = torch.eye(out.shape[1]) - 1.0 / out.shape[1]
            head.weight.copy_(centre @ head.weight)
            head.bias.copy_(centre @ head.bias)
            out = out @ centre.T
            scale = SPREAD / out.std(dim=0).clamp_min(1e-6)
            head.weight.mul_(scale[:, None])
            head.bias.sub_(out.mean(dim=0)).mul_(scale)
    folder = tmp_path_factory.mktemp("predictor") / "v1"
    save_version(folder, model, {"init": "random", "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD,
                                 "crop_size": CROP, "train_size": TRAIN, "center_crop_eval": False})
    loaded, _ = load_version(folder)
    return folder, loaded, images


@pytest.fixture(scope="module")
def ref(version):
    _, model, images = version
    return reference(model, images)


@pytest.fixture(scope="module")
def fp32_predictor(version):
    folder, _, _ = version
    return Predictor(folder, device="cpu", precision="fp32")


def max_diff(results, ref) -> float:
    return max(float((torch.tensor([r[task] for r in results]) - ref[task]).abs().max()) for task in CLASSES)


def test_reference_outputs_are_not_trivial(version, ref):
    _, _, images = version
    for task, probs in ref.items():
        assert probs.shape == (len(images), len(CLASSES[task]))
        # images differ from each other by far more than the bf16 tolerance ...
        assert float((probs - probs.mean(0)).abs().max()) > 4 * BF16_PROB_TOL
        # ... and not every image has the same winner
        assert len(set(probs.argmax(1).tolist())) > 1


def test_auto_precision_matches_fp32_reference(version, ref):
    folder, _, images = version
    predictor = Predictor(folder, device="cpu", precision="auto")
    assert predictor.dtype == predictor.precision.dtype
    assert next(predictor.model.parameters()).dtype == predictor.dtype
    tol = BF16_PROB_TOL if predictor.dtype == torch.bfloat16 else FP32_PROB_TOL
    assert predictor.crop_size == CROP and predictor.pixel_mean == tuple(PIXEL_MEAN)
    assert predictor.pixel_std == tuple(PIXEL_STD)
    results = predictor.predict_images(images, batch_size=4)     # two batches: 4 + 2
    assert len(results) == len(images)
    assert max_diff(results, ref) < tol


def test_fp32_forced_matches_reference(version, ref, fp32_predictor):
    _, _, images = version
    assert fp32_predictor.dtype == torch.float32
    assert next(fp32_predictor.model.parameters()).dtype == torch.float32
    assert max_diff(fp32_predictor.predict_images(images), ref) < FP32_PROB_TOL


def test_bf16_forced_matches_reference(version, ref):
    folder, _, images = version
    predictor = Predictor(folder, device="cpu", precision="bf16")
    assert predictor.dtype == torch.bfloat16
    assert next(predictor.model.parameters()).dtype == torch.bfloat16
    results = predictor.predict_images(images)
    assert all(isinstance(p, float) for r in results for p in r["emotion"])
    assert max_diff(results, ref) < BF16_PROB_TOL
    for task in CLASSES:
        got = torch.tensor([r[task] for r in results])
        # the most probable class agrees wherever the reference is not a near tie
        top2 = ref[task].topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * BF16_PROB_TOL
        assert bool(clear.any())
        assert torch.equal(got.argmax(1)[clear], ref[task].argmax(1)[clear])


def test_probabilities_sum_to_one_in_class_order(version, ref, fp32_predictor):
    _, _, images = version
    predictor = fp32_predictor
    assert predictor.classes == CLASSES
    results = predictor.predict_images(images[:3])
    for i, result in enumerate(results):
        assert set(result) == {"aesthetic", "emotion"}
        for task, names in CLASSES.items():
            assert len(result[task]) == len(names)
            assert sum(result[task]) == pytest.approx(1.0, abs=1e-5)
            assert all(0.0 <= p <= 1.0 for p in result[task])
            described = predictor.describe(result)[task]
            assert list(described["probabilities"]) == list(names)
            # class j of the output is class j of the network's head, i.e. names[j]
            for j, name in enumerate(names):
                assert described["probabilities"][name] == pytest.approx(float(ref[task][i, j]),
                                                                         abs=FP32_PROB_TOL)
            assert described["class"] == names[int(ref[task][i].argmax())]


def test_predict_paths_equals_predict_images(version, fp32_predictor, tmp_path):
    _, _, images = version
    paths = []
    for i, image in enumerate(images[:2]):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    from_paths = fp32_predictor.predict_paths(paths)
    from_images = fp32_predictor.predict_images(images[:2])
    for a, b in zip(from_paths, from_images):
        for task in CLASSES:
            assert a[task] == pytest.approx(b[task], abs=1e-6)


def test_center_crop_option(version, ref):
    folder, model, images = version
    predictor = Predictor(folder, device="cpu", precision="fp32", center_crop=True)
    assert predictor.prepare(images[0]).shape == (3, CROP, CROP)
    cropped = reference(model, images, center_crop=True)
    assert max_diff(predictor.predict_images(images), cropped) < FP32_PROB_TOL
    # and it is a different input from the plain resize
    assert max(float((cropped[t] - ref[t]).abs().max()) for t in CLASSES) > 10 * FP32_PROB_TOL


def test_describe_picks_argmax(fp32_predictor):
    predictor = fp32_predictor
    out = predictor.describe({"aesthetic": [0.3, 0.7], "emotion": [0.1, 0.2, 0.6, 0.1]})
    assert out["aesthetic"]["class"] == "high"
    assert out["aesthetic"]["probability"] == 0.7
    assert out["emotion"]["class"] == "anger"
    assert out["emotion"]["probability"] == 0.6
    assert out["emotion"]["probabilities"] == {"calm": 0.1, "joy": 0.2, "anger": 0.6, "fear": 0.1}
    first = predictor.describe({"aesthetic": [0.9, 0.1], "emotion": [0.4, 0.3, 0.2, 0.1]})
    assert first["aesthetic"]["class"] == "low" and first["emotion"]["class"] == "calm"


def test_bad_precision_is_refused(version):
    folder, _, _ = version
    with pytest.raises(ValueError, match="precision"):
        Predictor(folder, precision="fp16")


@pytest.mark.parametrize("fp32, bf16, chosen", [(938.0, 409.0, torch.bfloat16), (14.5, 23.3, torch.float32),
                                                (100.0, 95.0, torch.float32)])   # a near tie: fp32
def test_auto_on_a_bf16_cpu_serves_the_measured_faster_dtype(version, fresh_measurements, fp32, bf16, chosen):
    folder, _, _ = version
    predictor = Predictor(folder, device="cpu", precision="auto", measure=FakeTimings(fp32, bf16))
    assert predictor.dtype == chosen and next(predictor.model.parameters()).dtype == chosen
    assert predictor.precision.ms_per_image == {"fp32": fp32, "bf16": bf16}
    assert f"bf16 {bf16:.1f} vs fp32 {fp32:.1f} ms/image" in predictor.precision.describe()


def test_without_native_bf16_bf16_is_never_timed(version, fresh_measurements, monkeypatch):
    folder, _, _ = version
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    timings = FakeTimings(fp32=100.0, bf16=1.0)
    predictor = Predictor(folder, device="cpu", precision="auto", measure=timings)
    assert predictor.dtype == torch.float32 and timings.calls == 0
    assert "no native bf16" in predictor.precision.reason


@pytest.mark.parametrize("forced, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_a_forced_precision_wins_over_the_measurement(version, fresh_measurements, forced, dtype):
    folder, _, _ = version
    # the measurement would pick the other dtype
    timings = FakeTimings(fp32=1.0, bf16=100.0) if forced == "bf16" else FakeTimings(fp32=100.0, bf16=1.0)
    predictor = Predictor(folder, device="cpu", precision=forced, measure=timings)
    assert predictor.dtype == dtype and timings.calls == 0 and predictor.precision.reason == "forced"


def test_both_dtypes_are_timed_once_per_model_shape_in_a_process(version, fresh_measurements):
    folder, _, _ = version
    timings = FakeTimings(fp32=2.0, bf16=1.0)
    first = Predictor(folder, device="cpu", measure=timings)
    second = Predictor(folder, device="cpu", measure=timings)
    assert timings.calls == 1 and first.dtype == second.dtype == torch.bfloat16


@pytest.fixture(autouse=True)
def no_shared_timings(version):
    """Each test starts without the timings a Predictor keeps beside the version for other processes."""
    for path in version[0].glob(".precision-*.json"):
        path.unlink()


def new_process(monkeypatch):
    """What a second gunicorn worker starts with: no timing measured in its memory."""
    monkeypatch.setattr(precision_module, "_MEASURED", {})


def test_the_workers_of_one_server_share_one_timing_through_the_version_folder(version, fresh_measurements,
                                                                               monkeypatch):
    folder, _, _ = version
    first_worker, second_worker = FakeTimings(fp32=100.0, bf16=80.0), FakeTimings(fp32=100.0, bf16=95.0)
    first = Predictor(folder, device="cpu", measure=first_worker)
    new_process(monkeypatch)
    second = Predictor(folder, device="cpu", measure=second_worker)
    assert first_worker.calls == 1 and second_worker.calls == 0   # timed apart, they would disagree
    assert first.dtype == second.dtype == torch.bfloat16
    assert second.precision.ms_per_image == {"fp32": 100.0, "bf16": 80.0}


def test_workers_agree_on_a_new_version_whichever_version_each_timed_first(version, fresh_measurements,
                                                                           monkeypatch, tmp_path):
    folder, _, _ = version
    second_version = tmp_path / "v2"
    shutil.copytree(folder, second_version)
    first_worker = FakeTimings(fp32=100.0, bf16=80.0)
    Predictor(folder, device="cpu", measure=first_worker)                 # worker 1 loads v1 first
    timings_of_worker_1 = dict(precision_module._MEASURED)
    new_process(monkeypatch)
    second_worker = FakeTimings(fp32=100.0, bf16=95.0)
    on_v2 = Predictor(second_version, device="cpu", measure=second_worker)   # worker 2 loads v2 first
    monkeypatch.setattr(precision_module, "_MEASURED", timings_of_worker_1)   # back in worker 1
    also_on_v2 = Predictor(second_version, device="cpu", measure=first_worker)
    assert first_worker.calls == second_worker.calls == 1
    assert on_v2.dtype == also_on_v2.dtype == torch.float32   # worker 2's timing of v2 decides for both
    assert also_on_v2.precision.ms_per_image == {"fp32": 100.0, "bf16": 95.0}


def test_a_process_that_timed_already_writes_its_timing_for_a_new_version(version, fresh_measurements, tmp_path):
    folder, _, _ = version
    second_version = tmp_path / "v2"
    shutil.copytree(folder, second_version)
    timings = FakeTimings(fp32=100.0, bf16=80.0)
    Predictor(folder, device="cpu", measure=timings)
    Predictor(second_version, device="cpu", measure=timings)
    (written,) = second_version.glob(".precision-*.json")
    assert timings.calls == 1 and json.loads(written.read_text()) == {"fp32": 100.0, "bf16": 80.0}


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]", '{"fp32": 1}', '{"fp32": -1, "bf16": 2}',
                                     '{"fp32": NaN, "bf16": 2}', '{"fp32": true, "bf16": 2}',
                                     '{"fp32": 1, "bf16": 2, "note": "<script>"}'])
def test_an_implausible_timings_file_is_measured_again_and_rewritten(version, fresh_measurements, content):
    folder, _, _ = version
    Predictor(folder, device="cpu", measure=FakeTimings(fp32=10.0, bf16=20.0))
    (written,) = folder.glob(".precision-*.json")
    written.write_text(content)
    precision_module._MEASURED.clear()
    timings = FakeTimings(fp32=30.0, bf16=10.0)
    assert Predictor(folder, device="cpu", measure=timings).dtype == torch.bfloat16 and timings.calls == 1
    assert json.loads(written.read_text()) == {"fp32": 30.0, "bf16": 10.0}


def test_a_folder_that_cannot_be_written_leaves_each_process_to_measure(version, fresh_measurements, monkeypatch):
    folder, _, _ = version

    def refuse(target, text):
        raise PermissionError(13, "read-only file system", str(target))
    monkeypatch.setattr(precision_module, "write_text_atomically", refuse)
    timings = FakeTimings(fp32=2.0, bf16=1.0)
    assert Predictor(folder, device="cpu", measure=timings).dtype == torch.bfloat16 and timings.calls == 1
    assert not list(folder.glob(".precision-*.json"))


def test_time_dtypes_keeps_each_dtypes_fastest_pass_after_a_warm_up(version):
    _, model, _ = version
    # timed passes in turns, for 2 images: fp32 30 ms, bf16 8 ms, fp32 20 ms, bf16 6 ms
    readings = iter([0.0, 0.030, 1.0, 1.008, 2.0, 2.020, 3.0, 3.006])
    timings = time_dtypes(model.eval(), CROP, batch=2, rounds=2, timer=lambda: next(readings))
    assert timings == {"fp32": 10.0, "bf16": 3.0}
    assert next(model.parameters()).dtype == torch.float32   # bf16 was timed on a copy


def test_the_precision_setting_reaches_the_served_predictor_and_its_reason(version, fresh_measurements):
    from backend.serving.models import ModelCache
    from backend.serving.registry import VersionRef

    folder, _, _ = version
    served = ModelCache(10 ** 8, "pytorch", precision="fp32").load(VersionRef("v", folder))
    assert served.predictor.dtype == torch.float32
    assert served.path_reason.startswith("pytorch in fp32 (forced): ")


def mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


def fresh_copy(folder: Path, target: Path) -> Path:
    """The version without the bf16 weights earlier tests wrote beside it."""
    import shutil
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(".weights-bf16-*"))
    return target


def test_bf16_weights_are_mapped_from_one_file_that_processes_share(version, tmp_path):
    folder = fresh_copy(version[0], tmp_path / "v")
    first = Predictor(folder, device="cpu", precision="bf16")
    cached = list(folder.glob(".weights-bf16-*.safetensors"))
    assert len(cached) == 1
    second = Predictor(folder, device="cpu", precision="bf16")
    head = second.model.branch_a.head[-1].weight     # 2-D: channels_last leaves it mapped
    assert head.dtype == torch.bfloat16
    start = head.untyped_storage().data_ptr()
    mapped = [line for line in mapped_files().splitlines() if str(cached[0]) in line]
    assert any(int(line.split()[0].split("-")[0], 16) <= start < int(line.split()[0].split("-")[1], 16)
               for line in mapped)
    images = make_images(3)
    assert first.predict_images(images) == second.predict_images(images)


def test_bf16_weights_in_memory_when_the_folder_cannot_be_written(version, ref, monkeypatch, tmp_path):
    folder = fresh_copy(version[0], tmp_path / "v")
    images = version[2]

    def refuse(target, write):
        raise PermissionError("read-only")
    monkeypatch.setattr(predictor_module, "write_atomically", refuse)
    predictor = Predictor(folder, device="cpu", precision="bf16")
    assert predictor.dtype == torch.bfloat16 and not list(folder.glob(".weights-bf16-*"))
    assert max_diff(predictor.predict_images(images), ref) < BF16_PROB_TOL


@pytest.mark.parametrize("damage", ["altered", "truncated"])
def test_a_bf16_weights_file_that_is_not_the_versions_is_never_served(version, ref, tmp_path, damage):
    folder = fresh_copy(version[0], tmp_path / "v")
    Predictor(folder, device="cpu", precision="bf16")
    cached = next(folder.glob(".weights-bf16-*.safetensors"))
    if damage == "altered":   # same names and shapes, other values: only a comparison catches it
        state = load_file(cached)
        save_file({k: torch.zeros_like(v) for k, v in state.items()}, cached)
    else:
        cached.write_bytes(cached.read_bytes()[:1000])
    predictor = Predictor(folder, device="cpu", precision="bf16")
    assert max_diff(predictor.predict_images(version[2]), ref) < BF16_PROB_TOL
    rewritten, original = load_file(cached), load_file(folder / WEIGHTS_FILE)
    assert rewritten.keys() == original.keys()
    assert all(torch.equal(rewritten[k], v.to(torch.bfloat16) if v.is_floating_point() else v)
               for k, v in original.items())
