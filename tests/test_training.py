"""The training loop end to end on generated images whose labels are visible."""
import dataclasses
import json

import pytest
import torch

from backend.cli import main as cli_main
from model.errors import AesemoError, ManifestError, TrainingDiverged
from model.network import NetConfig
from model.pipeline import train_version
from model.predictor import Predictor
from model.synthetic import write_synthetic_set
from model.train import TrainConfig, split_indices
from model.version import read_meta

SMALL = {"train_size": 40, "crop_size": 35}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real training run shared by the tests below (about a minute on 2 cores)."""
    root = tmp_path_factory.mktemp("train")
    manifest = write_synthetic_set(root / "images", 320, seed=1, size=48)
    events = []
    meta = train_version(manifest, root / "version", NetConfig(backbone="resnet18"),
                         TrainConfig(epochs=7, lr=0.02, patience=0, seed=3, **SMALL),
                         use_pretrained=False, progress=events.append)
    return root, meta, events


def test_reaches_clearly_above_chance_on_both_tasks(trained):
    _, meta, _ = trained
    # chance: 0.5 for aesthetic, 0.125 for the 8 emotions
    assert meta["metrics"]["aesthetic"]["accuracy"] >= 0.85
    assert meta["metrics"]["emotion"]["accuracy"] >= 0.4
    assert meta["metrics"]["emotion"]["macro_f1"] >= 0.3
    assert meta["metrics"]["aesthetic"]["n"] == meta["training"]["val_size"] == 64


def test_best_epoch_is_the_one_kept(trained):
    root, meta, _ = trained
    history = meta["training"]["history"]
    best = max(history, key=lambda h: h["score"])
    assert meta["training"]["best_epoch"] == best["epoch"]
    kept = {t: round(meta["metrics"][t]["macro_f1"], 4) for t in ("aesthetic", "emotion")}
    assert kept == {t: best["metrics"][t]["macro_f1"] for t in kept}


def test_version_metadata_and_predictions(trained):
    root, meta, _ = trained
    on_disk = read_meta(root / "version")
    assert on_disk["init"] == "random"
    assert on_disk["trained"] is True
    assert len(on_disk["pixel_mean"]) == 3 and all(0 < m < 1 for m in on_disk["pixel_mean"])
    assert on_disk["classes"]["emotion"][0] == "amusement"
    predictor = Predictor(root / "version")
    manifest_rows = [json.loads(line) for line in (root / "images" / "manifest.jsonl").read_text().splitlines()[1:]]
    sample = manifest_rows[:16]
    probs = predictor.predict_paths([root / "images" / r["image"] for r in sample])
    correct = sum(predictor.describe(p)["aesthetic"]["class"] == r["aesthetic"] for p, r in zip(probs, sample))
    assert correct >= 13


def test_progress_reports_steps_and_epochs(trained):
    _, meta, events = trained
    steps = [e for e in events if e["stage"] == "training"]
    evaluated = [e for e in events if e["stage"] == "evaluated"]
    assert len(evaluated) == meta["training"]["epochs_run"] == 7
    assert steps[0]["epoch"] == 1 and steps[0]["step"] == 1
    assert all({"loss", "eta_s", "steps", "epochs", "lr"} <= set(e) for e in steps)
    assert steps[-1]["eta_s"] == pytest.approx(0.0, abs=1e-6)
    assert len(steps) == 7 * steps[0]["steps"]


def test_early_stopping_stops_and_says_so(tmp_path, monkeypatch):
    manifest = write_synthetic_set(tmp_path / "images", 24, seed=2, size=32)
    # the held-out score never improves after epoch 1 (a tiny lr alone still moves BatchNorm's
    # running statistics, and with them the score)
    monkeypatch.setattr("model.train.selection_score", lambda metrics: 0.5)
    meta = train_version(manifest, tmp_path / "v", NetConfig(backbone="resnet18"),
                         TrainConfig(epochs=6, lr=1e-12, patience=2, train_size=32, crop_size=28),
                         use_pretrained=False)
    assert meta["training"]["epochs_run"] == 3
    assert meta["training"]["stopped_early"] is True
    assert meta["training"]["best_epoch"] == 1
    assert meta["training"]["stopping"] == "stopped at epoch 3 of 6: no better held-out score for 2 epochs; kept epoch 1"


def test_a_run_without_early_stopping_says_it_ran_every_epoch(trained):
    _, meta, events = trained
    stated = f"ran all 7 epochs; kept epoch {meta['training']['best_epoch']} (the best held-out score)"
    assert meta["training"]["stopping"] == stated
    assert [e["stopping"] for e in events if e["stage"] == "stopped"] == [stated]


def test_one_task_rows_and_soft_targets_train(tmp_path):
    manifest = write_synthetic_set(tmp_path / "images", 16, seed=4, size=32)
    lines = manifest.read_text().splitlines()
    rows = [json.loads(line) for line in lines[1:]]
    for i, row in enumerate(rows):
        if i % 3 == 0:
            row["aesthetic"] = None           # labelled for emotion only
        elif i % 3 == 1:
            row["emotion"] = {row["emotion"]: 0.6, "awe": 0.4} if row["emotion"] != "awe" else {"awe": 1}
    manifest.write_text("\n".join([lines[0]] + [json.dumps(r) for r in rows]) + "\n")
    meta = train_version(manifest, tmp_path / "v", NetConfig(backbone="resnet18"),
                         TrainConfig(epochs=1, train_size=32, crop_size=28, val_fraction=0.25),
                         use_pretrained=False)
    assert meta["training"]["train_size"] == 12
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in meta["training"]["history"])


def test_training_skips_unreadable_images_and_names_them(tmp_path):
    manifest = write_synthetic_set(tmp_path / "images", 8, seed=5, size=32)
    (tmp_path / "images" / "img0003.png").write_bytes(b"not a png")
    (tmp_path / "images" / "img0005.png").unlink()
    meta = train_version(manifest, tmp_path / "v", NetConfig(backbone="resnet18"),
                         TrainConfig(epochs=1, train_size=32, crop_size=28), use_pretrained=False)
    skipped = meta["training"]["skipped"]
    assert len(skipped) == 2
    assert any("manifest.jsonl:5" in s and "img0003.png" in s for s in skipped)
    assert any("manifest.jsonl:7" in s and "img0005.png" in s for s in skipped)
    with pytest.raises(ManifestError, match="img0003.png"):
        train_version(manifest, tmp_path / "v2", NetConfig(backbone="resnet18"),
                      TrainConfig(epochs=1, train_size=32, crop_size=28), use_pretrained=False, strict=True)


def test_fine_tune_from_a_version_keeps_its_classes(tmp_path, trained):
    root, _, _ = trained
    manifest = write_synthetic_set(tmp_path / "images", 8, seed=6, size=32)
    meta = train_version(manifest, tmp_path / "v", NetConfig(backbone="vgg16"),
                         TrainConfig(epochs=1, train_size=32, crop_size=28), init_from=root / "version")
    assert meta["init"] == "version:version"
    assert meta["architecture"]["backbone"] == "resnet18"
    assert meta["parent"] == str(root / "version")


def test_a_single_usable_image_is_refused(tmp_path):
    manifest = write_synthetic_set(tmp_path / "images", 2, seed=7, size=32)
    (tmp_path / "images" / "img0001.png").unlink()
    with pytest.raises(AesemoError, match="at least 2"):
        train_version(manifest, tmp_path / "v", NetConfig(backbone="resnet18"),
                      TrainConfig(epochs=1, train_size=32, crop_size=28), use_pretrained=False)


def test_split_is_seeded_and_disjoint():
    a_train, a_val = split_indices(50, 0.2, seed=1)
    b_train, b_val = split_indices(50, 0.2, seed=1)
    assert torch.equal(a_val, b_val) and len(a_val) == 10
    assert set(a_train.tolist()).isdisjoint(a_val.tolist())
    assert len(split_indices(3, 0.1, seed=0)[1]) == 1


# ----- a loss or weights gone NaN stop the training ---------------------------------------------------

@pytest.fixture
def nan_loss(monkeypatch):
    """The loss of every step made NaN, as a too-high learning rate ends up doing."""
    from model import train as train_module
    original = train_module.two_task_loss

    def poisoned(*args, **kwargs):
        parts = original(*args, **kwargs)
        return dataclasses.replace(parts, total=parts.total * float("nan"))
    monkeypatch.setattr(train_module, "two_task_loss", poisoned)


def test_a_non_finite_loss_stops_training_and_saves_nothing(tmp_path, nan_loss):
    manifest = write_synthetic_set(tmp_path / "images", 12, seed=8, size=32)
    with pytest.raises(TrainingDiverged, match="the loss became nan at epoch 1, step 1"):
        train_version(manifest, tmp_path / "v", NetConfig(backbone="resnet18"),
                      TrainConfig(epochs=2, train_size=32, crop_size=28), use_pretrained=False)
    assert not (tmp_path / "v").exists()


def test_weights_gone_non_finite_stop_training_even_with_a_finite_loss(tmp_path, monkeypatch):
    """One step an epoch: the step that breaks the weights still reports the loss before it."""
    from model.train import EpochRun
    original = EpochRun.train_epoch

    def breaking(run, *args, **kwargs):
        loss = original(run, *args, **kwargs)
        with torch.no_grad():
            run.model.branch_a.head[-1].weight[0, 0] = float("inf")
        return loss
    monkeypatch.setattr(EpochRun, "train_epoch", breaking)
    manifest = write_synthetic_set(tmp_path / "images", 6, seed=9, size=32)
    with pytest.raises(TrainingDiverged) as info:
        train_version(manifest, tmp_path / "v", NetConfig(backbone="resnet18"),
                      TrainConfig(epochs=3, train_size=32, crop_size=28), use_pretrained=False)
    assert "training diverged at epoch 1" in str(info.value)
    assert "weights branch_a.head.fc.weight are not finite" in str(info.value)  # resnet18: one linear head
    assert not (tmp_path / "v").exists()


def test_aesemo_train_stops_with_one_line_when_the_loss_goes_nan(tmp_path, nan_loss, capsys):
    manifest = write_synthetic_set(tmp_path / "images", 12, seed=8, size=32)
    code = cli_main(["train", str(manifest), "--out", str(tmp_path / "v"), "--epochs", "1", "--train-size", "32",
                     "--crop-size", "28", "--backbone", "resnet18", "--no-pretrained", "-q"])
    err = capsys.readouterr().err
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("aesemo: error:")]
    assert len(errors) == 1 and "training diverged: the loss became nan" in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "v").exists()
