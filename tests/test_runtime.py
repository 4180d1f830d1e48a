"""The OpenVINO runtime path (model/runtime.py, backend/serving/models.py): export with measured
agreement, the threshold, hash checks, the background export and PyTorch fallback, and /predict,
the time budget, the hot swap and the admin page while a runtime variant serves."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import openvino  # noqa: F401  (a hard dependency: a broken install fails here)

from backend.core.settings import Settings
from backend.http.app import create_app
from backend.serving.models import ModelCache
from backend.serving.registry import VersionRef, project_versions_dir, set_current_version
from model import runtime
from model.agreement_rule import agreement_rule
from model.predictor import Predictor
from model.version import RUNTIME_FILE

import runtime_children
from hanging_server import HangingServer
from training_project import flip_a_byte, predict_body, setup_project, write_small_version

PROJECT = 7
FIRST, SECOND = "v0001-20261101000000", "v0002-20261102000000"


FP32_CHOICE = {"dtype": "fp32", "reason": "forced", "ms_per_image": {}}


@pytest.fixture(scope="module", autouse=True)
def pytorch_is_slow():
    """A variant serves only when it is faster than the PyTorch predictor; on the small test
    network either may win, so these tests make PyTorch the slower one (the gate itself is
    tested below with the opposite)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "pytorch_ms_per_image", lambda folder, images, precision: (float("inf"), FP32_CHOICE))
        yield


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small version with its runtime made (int8 first, float32 as the second choice)."""
    folder = tmp_path_factory.mktemp("runtime") / "v1"
    write_small_version(folder, seed=1)
    return folder, runtime.export_runtime(folder)


def copy_version(source: Path, target: Path, with_runtime: bool = True) -> Path:
    shutil.copytree(source, target, ignore=None if with_runtime else
                    shutil.ignore_patterns(RUNTIME_FILE, "openvino-*"))
    return target


def test_export_records_agreement_per_variant_and_serves_one_that_passes(exported):
    folder, record = exported
    assert json.loads((folder / RUNTIME_FILE).read_text()) == record
    assert record["images"]["held_out"][0] == "generated" and record["images"]["calibration"][0] == "generated"
    serving = record["serving"]
    assert serving in runtime.VARIANTS
    made = runtime.VARIANTS[:runtime.VARIANTS.index(serving) + 1]
    for name in made:
        variant = record["variants"][name]
        assert set(variant["top1"]) == {"aesthetic", "emotion"}
        assert set(variant["files"]) == {f"{name}.xml", f"{name}.bin"}
        assert all((folder / f).is_file() for f in variant["files"])
    for name in runtime.VARIANTS[len(made):]:
        assert record["variants"][name] == {"skipped": f"{serving} serves"}
        assert not (folder / f"{name}.bin").exists()
    rule = agreement_rule(runtime.DEFAULT_THRESHOLD)
    assert record["images"]["held_out"] == ["generated", rule.images]
    assert min(record["variants"][serving]["agreeing"].values()) >= rule.least_agreeing
    assert serving in record["reason"]
    assert f"on {rule.images} generated images: passes the check" in record["reason"]


def test_the_fastest_variant_that_passes_serves_and_the_slower_ones_are_not_made(tmp_path, exported):
    """Every layer int8 comes first; when it cannot serve (here: its quantization fails), int8
    with the heads in float is made next and serves, and float32 is never made."""
    folder = copy_version(exported[0], tmp_path / "v", with_runtime=False)
    quantized = runtime._quantized

    def every_layer_fails(converted, calibration, options):
        if not options["float_layers"]:
            raise RuntimeError("quantizer crashed")
        return quantized(converted, calibration, options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "_quantized", every_layer_fails)
        record = runtime.export_runtime(folder)
    assert record["variants"][runtime.INT8] == {"error": "RuntimeError: quantizer crashed"}
    assert record["serving"] == runtime.INT8_FLOAT_HEADS
    assert record["reason"].startswith(f"{runtime.INT8_FLOAT_HEADS}: top-1 agreement")
    assert f"{runtime.INT8} failed: RuntimeError: quantizer crashed" in record["reason"]
    assert record["variants"][runtime.FP32] == {"skipped": f"{runtime.INT8_FLOAT_HEADS} serves"}
    assert not (folder / f"{runtime.FP32}.xml").exists()
    served = ModelCache(10 ** 8, "auto").load(VersionRef("v", folder))
    assert served.path == runtime.INT8_FLOAT_HEADS


def test_each_int8_variant_records_how_it_was_quantized_and_which_layers_stay_float(tmp_path, exported):
    import openvino as ov
    folder = copy_version(exported[0], tmp_path / "v", with_runtime=False)
    record = runtime.export_runtime(folder, variants=(runtime.INT8, runtime.INT8_FLOAT_HEADS, runtime.FP32),
                                    make_all=True)
    assert all("top1" in record["variants"][name] for name in runtime.VARIANTS)
    assert "quantization" not in record["variants"][runtime.FP32]

    def int8_weighted(name: str) -> set[str]:
        """Types of the layers whose weights the file stores as int8 (a Constant of int8
        dequantized by Convert, Subtract and Multiply on the way to the layer)."""
        network = ov.Core().read_model(folder / f"{name}.xml")
        found = set()
        for op in network.get_ops():
            for port in op.input_values()[1:]:
                node = port.get_node()
                while node.get_type_name() in ("Multiply", "Subtract", "Convert"):
                    node = node.input_value(0).get_node()
                if node.get_type_name() == "Constant" and node.get_output_element_type(0) == ov.Type.i8:
                    found.add(op.get_type_name())
        return found

    for name in (runtime.INT8, runtime.INT8_FLOAT_HEADS):
        assert record["variants"][name]["quantization"] == runtime.QUANTIZATION[name]
    assert int8_weighted(runtime.INT8) == {"Convolution", "MatMul"}
    assert int8_weighted(runtime.INT8_FLOAT_HEADS) == {"Convolution"}
    assert int8_weighted(runtime.FP32) == set()
    sizes = {name: (folder / f"{name}.bin").stat().st_size for name in runtime.VARIANTS}
    assert sizes[runtime.INT8] < sizes[runtime.INT8_FLOAT_HEADS] < sizes[runtime.FP32]


def test_runtime_predictor_agrees_with_pytorch_float32(exported):
    folder, record = exported
    predictor = runtime.RuntimePredictor(folder, record)
    reference = Predictor(folder, device="cpu", precision="fp32")
    images = runtime.generated_images(16, reference.crop_size, seed=9)
    got, want = predictor.predict_tensors(images), reference.predict_tensors(images)
    for task in ("aesthetic", "emotion"):
        assert got[task].shape == want[task].shape
        assert float((got[task] - want[task]).abs().max()) < 0.05
        assert torch.allclose(got[task].sum(1), torch.ones(16), atol=1e-3)


def test_a_variant_below_the_threshold_is_not_served(tmp_path, exported):
    folder = copy_version(exported[0], tmp_path / "v", with_runtime=False)
    images = runtime.generated_images(16, Predictor(folder).crop_size, seed=5)
    record = runtime.export_runtime(folder, held_out=images, threshold=1.01, variants=(runtime.FP32,))
    assert record["serving"] == runtime.PYTORCH
    assert "< 1.01 on 16 held-out images" in record["reason"]
    served = ModelCache(10 ** 8, "auto").load(VersionRef("v", folder))
    assert served.path == "pytorch" and "< 1.01" in served.path_reason


def test_a_variant_slower_than_the_pytorch_predictor_is_not_served(tmp_path, exported, monkeypatch):
    folder = copy_version(exported[0], tmp_path / "v", with_runtime=False)
    monkeypatch.setattr(runtime, "pytorch_ms_per_image", lambda folder, images, precision: (0.001, FP32_CHOICE))
    record = runtime.export_runtime(folder, variants=(runtime.FP32,))
    assert record["variants"][runtime.FP32]["ms_per_image"] > 0
    assert record["serving"] == runtime.PYTORCH
    assert "not faster than the PyTorch predictor's 0.0 (in fp32)" in record["reason"]


def test_a_tampered_variant_is_refused_and_pytorch_serves(tmp_path, exported):
    folder = copy_version(exported[0], tmp_path / "v")
    serving = exported[1]["serving"]
    flip_a_byte(folder / f"{serving}.bin")
    served = ModelCache(10 ** 8, "auto").load(VersionRef("v", folder))
    assert served.path == "pytorch"
    assert "sha256" in served.path_reason


def test_a_record_made_for_other_weights_is_ignored(tmp_path, exported):
    folder = copy_version(exported[0], tmp_path / "v")
    write_small_version(folder, seed=2)  # new weights, old runtime files
    assert runtime.read_runtime(folder) is None


def test_a_version_without_runtime_serves_pytorch_then_its_exported_runtime(tmp_path, exported, monkeypatch):
    folder = copy_version(exported[0], tmp_path / "v", with_runtime=False)
    monkeypatch.setattr(runtime, "export_runtime", runtime_children.export_with_slow_pytorch)
    cache = ModelCache(10 ** 8, "auto")
    served = cache.load(VersionRef("v", folder))
    first = served.predictor
    assert first.path == "pytorch"  # at once: the request never waits for an export
    cache.wait_for_exports(timeout_s=600)
    assert served.path in runtime.VARIANTS, served.path_reason
    assert (folder / RUNTIME_FILE).is_file()
    assert isinstance(first, Predictor)  # a request that took the old predictor keeps a working one


def test_a_failed_export_leaves_pytorch_serving_with_the_reason(tmp_path, exported, monkeypatch):
    folder = copy_version(exported[0], tmp_path / "v", with_runtime=False)
    monkeypatch.setattr(runtime, "export_runtime", runtime_children.failing_export)
    cache = ModelCache(10 ** 8, "auto")
    served = cache.load(VersionRef("v", folder))
    cache.wait_for_exports(timeout_s=120)
    assert served.path == "pytorch"
    assert "failed: RuntimeError: exporter exploded" in served.path_reason  # the child's own exception
    images = runtime.generated_images(2, served.predictor.crop_size)
    assert served.predictor.predict_tensors(images)["aesthetic"].shape[0] == 2
    assert not (folder / RUNTIME_FILE).exists() and not list(folder.glob(f"{runtime.WORK_FOLDER_PREFIX}*"))


def test_the_pytorch_setting_never_uses_the_runtime(exported):
    served = ModelCache(10 ** 8, "pytorch").load(VersionRef("v", exported[0]))
    assert served.path == "pytorch" and "AESEMO_INFERENCE_PATH=pytorch" in served.path_reason


@pytest.fixture(scope="module")
def runtime_app(tmp_path_factory, redis_url, images, exported):
    """An app on the runtime path whose project serves a version with its runtime made."""
    settings = replace(Settings(), data_dir=Path(tmp_path_factory.mktemp("rt")) / "data", redis_url=redis_url,
                       backbone="resnet18", allowed_image_hosts=("127.0.0.1",), suggest_untrained=True,
                       suggestion_gate=False, control_fraction=0.0, inference_path="auto")
    versions = project_versions_dir(settings, str(PROJECT))
    versions.mkdir(parents=True)
    copy_version(exported[0], versions / FIRST)
    app = create_app(settings)
    client = app.test_client()
    setup_project(client, PROJECT)
    import redis
    set_current_version(redis.Redis.from_url(redis_url, decode_responses=True), str(PROJECT), FIRST)
    return app


def post(client, body):
    return client.post("/predict", data=json.dumps(body), content_type="application/json")


def test_predict_and_the_admin_page_with_the_runtime_serving(runtime_app, images, exported):
    client = runtime_app.test_client()
    answer = post(client, predict_body(PROJECT, [images.url(f"/img/{i}.png") for i in range(1, 4)]))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    results = answer.get_json()["results"]
    assert len(results) == 3 and all(r and r["result"] for r in results)
    served = runtime_app.extensions["aesemo"].swap.get(str(PROJECT))
    assert served.path == exported[1]["serving"]
    page = client.get(f"/?project={PROJECT}").get_data(as_text=True)
    assert f'id="inference-path">{served.path}<' in page


def test_the_budget_answers_what_finished_on_the_runtime_path(runtime_app, images):
    backend = runtime_app.extensions["aesemo"]
    app = create_app(replace(backend.settings, predict_budget_s=8.0, image_timeout_s=30.0, predict_chunk_size=2))
    fresh = app.extensions["aesemo"]
    fresh.models = fresh.swap.models = backend.models
    with HangingServer("127.0.0.1") as hanging:
        # images no earlier test predicted: a stored prediction would answer without the budget
        urls = [images.url("/img/11.png"), hanging.url("/img/12.png"), images.url("/img/13.png")]
        answer = post(app.test_client(), predict_body(PROJECT, urls))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    reply = answer.get_json()
    assert reply["results"][0]["result"] and reply["results"][1:] == [[], []]
    assert [e["kind"] for e in reply["errors"]] == ["budget", "budget"]


def test_the_hot_swap_moves_to_a_new_versions_runtime(runtime_app, tmp_path, exported):
    backend = runtime_app.extensions["aesemo"]
    versions = project_versions_dir(backend.settings, str(PROJECT))
    second = versions / SECOND
    write_small_version(second, seed=3)
    runtime.export_runtime(second)
    assert backend.swap.swap_to(str(PROJECT), SECOND)
    served = backend.swap.get(str(PROJECT))
    assert served.version == SECOND and served.path in runtime.VARIANTS


def test_the_command_line_exports_with_a_manifests_images(tmp_path, exported):
    from backend.cli import main
    from model.synthetic import write_synthetic_set
    folder = copy_version(exported[0], tmp_path / "v", with_runtime=False)
    manifest = write_synthetic_set(tmp_path / "train", 8)
    assert main(["export-runtime", str(folder), "--calibration", str(manifest), "--held-out", str(manifest)]) == 0
    record = runtime.read_runtime(folder)
    assert record["images"] == {"calibration": ["training", 8], "held_out": ["held-out", 8]}
    with pytest.raises(SystemExit):
        main(["export-runtime", str(folder), "--min-agreement", "2"])


def job_manifest(folder: Path, count: int, held_out: int) -> Path:
    """A generated training set whose first `held_out` rows are marked as a job marks them."""
    from model.heldout import HELDOUT_SPLIT
    from model.synthetic import write_synthetic_set
    manifest = write_synthetic_set(folder, count)
    header, *rows = manifest.read_text().splitlines()
    marked = [json.dumps({**json.loads(row), "split": HELDOUT_SPLIT}) if i < held_out else row
              for i, row in enumerate(rows)]
    manifest.write_text("\n".join([header, *marked]) + "\n")
    return manifest


def test_a_job_manifest_calibrates_on_training_rows_and_checks_on_held_out_rows(tmp_path, exported, monkeypatch):
    folder = copy_version(exported[0], tmp_path / "v", with_runtime=False)
    monkeypatch.setattr(runtime, "export_from_manifest", runtime_children.export_from_manifest_with_slow_pytorch)
    record = runtime.export_from_job_manifest(folder, job_manifest(tmp_path / "train", 8, held_out=3))
    assert record["images"] == {"calibration": ["training", 5], "held_out": ["held-out", 3]}
    assert "(3 held-out images)" in record["reason"] or "on 3 held-out images" in record["reason"]
    assert runtime.read_runtime(folder) == record


def test_the_training_job_exports_a_promoted_versions_runtime_unless_pytorch_is_forced(tmp_path, exported,
                                                                                      monkeypatch):
    from types import SimpleNamespace
    from backend.training.job import runtime_step
    monkeypatch.setattr(runtime, "export_from_manifest", runtime_children.export_from_manifest_with_slow_pytorch)
    states = []
    progress = SimpleNamespace(state=lambda state, **extra: states.append(state),
                               stage=lambda name, title, **extra: states.append(name))
    manifest = job_manifest(tmp_path / "train", 8, held_out=0)
    forced = copy_version(exported[0], tmp_path / "forced", with_runtime=False)
    runtime_step(SimpleNamespace(settings=replace(Settings(), inference_path="pytorch"), progress=progress),
                 forced, manifest)
    assert not (forced / RUNTIME_FILE).exists() and states == []
    folder = copy_version(exported[0], tmp_path / "v", with_runtime=False)
    runtime_step(SimpleNamespace(settings=replace(Settings(), inference_path="auto"), progress=progress),
                 folder, manifest)
    # no held-out rows in this manifest: generated images stand in, and the record says so
    assert runtime.read_runtime(folder)["images"] == {"calibration": ["training", 8],
                                                      "held_out": ["generated", agreement_rule(0.99).images]}
    assert states == ["runtime"]


@pytest.mark.parametrize("short_by, serves", [(0, True), (1, False)])
def test_without_images_of_its_own_a_variant_is_checked_on_the_rules_generated_images(tmp_path, exported,
                                                                                      monkeypatch, short_by, serves):
    """As many generated images as the agreement rule needs, and a task passes when at least its
    least count agree: 593 of 604 pass (a share below the 0.99 threshold), 592 do not."""
    folder = copy_version(exported[0], tmp_path / "v", with_runtime=False)
    rule = agreement_rule(runtime.DEFAULT_THRESHOLD)
    measured, checked_on = runtime.agreement, []

    def agreeing_on_the_least_count(outputs, reference):
        checked_on.append(len(reference["aesthetic"]))
        found, count = measured(outputs, reference), rule.least_agreeing - short_by
        return {**found, "top1": dict.fromkeys(found["top1"], count / rule.images),
                "agreeing": dict.fromkeys(found["agreeing"], count)}
    monkeypatch.setattr(runtime, "agreement", agreeing_on_the_least_count)
    record = runtime.export_runtime(folder, variants=(runtime.FP32,))
    assert checked_on == [rule.images] and record["images"]["held_out"] == ["generated", rule.images]
    assert record["agreement_rule"]["least_agreeing"] == rule.least_agreeing
    assert (record["serving"] == runtime.FP32) == serves, record["reason"]
    assert ("passes the check" if serves else "fails the check") in record["reason"]
