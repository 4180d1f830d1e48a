"""`aesemo evaluate`: metrics against hand-computed values, ECE on known cases, the split
filter, and the confusion PNGs, on tiny generated images with mobilenet_v3_small."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from backend.cli import main
from model.evaluate import evaluate_task, expected_calibration_error
from model.figures import confusion_png
from model.network import NetConfig
from model.pipeline import init_version
from model.predictor import Predictor
from model.synthetic import write_synthetic_set

TOL = 1e-9


def test_metrics_equal_hand_computed_ones():
    # rows: a right at 0.5 (soft target, most probable a), b right at 0.75, a predicted b at
    # 0.78, and one unlabelled row that must not count; class c never occurs
    probabilities = torch.tensor([[.5, .3, .2], [.15, .75, .10], [.12, .78, .10], [1., 0., 0.]])
    targets = torch.tensor([[.6, .4, 0.], [0., 1., 0.], [1., 0., 0.], [0., 0., 0.]])
    mask = torch.tensor([1., 1., 1., 0.])
    m = evaluate_task(probabilities, targets, mask, ("a", "b", "c"))
    assert m["n"] == 3
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert m["accuracy"] == pytest.approx(2 / 3, abs=TOL)
    # F1(a) = 2*1/(1+2), F1(b) = 2*1/(2+1); c is in neither truth nor predictions
    assert m["macro_f1"] == pytest.approx(2 / 3, abs=TOL)
    assert m["recall"] == {"a": pytest.approx(0.5), "b": pytest.approx(1.0), "c": None}
    # bins of width 1/15: 0.5 alone (gap 0.5); 0.75 and 0.78 share (0.733, 0.8] (accuracy 0.5, gap 0.265)
    assert m["ece"] == pytest.approx((0.5 + 2 * 0.265) / 3, abs=1e-6)


def test_no_labelled_row_gives_none():
    assert evaluate_task(torch.ones(2, 2) / 2, torch.zeros(2, 2), torch.zeros(2), ("x", "y")) is None


@pytest.mark.parametrize("right, expected", [(9, 0.0), (5, 0.4), (10, 0.1)])
def test_ece_of_a_single_confidence(right, expected):
    # ten samples all at confidence 0.9: the ECE is |accuracy - 0.9|
    probabilities = np.tile([0.9, 0.1], (10, 1))
    truth = np.array([0] * right + [1] * (10 - right))
    assert expected_calibration_error(probabilities, truth) == pytest.approx(expected, abs=1e-9)


def test_ece_weights_bins_by_their_share():
    # 3 samples at 0.6 all right (gap 0.4), 1 sample at 1.0 right (gap 0): 0.4 * 3/4
    probabilities = np.array([[0.6, 0.4]] * 3 + [[1.0, 0.0]])
    assert expected_calibration_error(probabilities, np.zeros(4, dtype=int)) == pytest.approx(0.3)


def test_confusion_png_fits_full_class_names(tmp_path):
    names = ["contentment", "excitement", "amusement"]
    confusion_png([[1, 0, 0], [0, 2, 0], [0, 0, 3]], names, "emotion", tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as image:
        assert image.width > len("contentment") * 6 + 3 * 44


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate") / "v1"
    torch.manual_seed(0)
    init_version(folder, NetConfig(backbone="mobilenet_v3_small", fc_width=16), use_pretrained=False)
    return folder


def manifest_with_splits(folder, count=9):
    """The generated set with every third row marked "test" and the others "train"."""
    path = write_synthetic_set(folder, count, size=40)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines[1:]]
    for i, row in enumerate(rows):
        row["split"] = "test" if i % 3 == 0 else "train"
    path.write_text("\n".join([lines[0]] + [json.dumps(r) for r in rows]) + "\n", encoding="utf-8")
    return path, [r for r in rows if r["split"] == "test"]


def hand_metrics(predictor, folder, rows, task):
    names = predictor.classes[task]
    predicted = [max(range(len(names)), key=p[task].__getitem__)
                 for p in predictor.predict_paths([folder / r["image"] for r in rows])]
    truth = [names.index(r[task]) for r in rows]
    confusion = [[0] * len(names) for _ in names]
    for t, p in zip(truth, predicted):
        confusion[t][p] += 1
    return sum(t == p for t, p in zip(truth, predicted)) / len(rows), confusion


def test_evaluate_command_on_the_test_split(version, tmp_path, capsys):
    manifest, test_rows = manifest_with_splits(tmp_path / "data")
    out = tmp_path / "report"
    assert main(["evaluate", str(version), str(manifest), "--split", "test", "--out", str(out),
                 "--device", "cpu", "--precision", "fp32", "-q"]) == 0
    report = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert report["images"] == len(test_rows) == 3
    predictor = Predictor(version, device="cpu", precision="fp32")
    for task in ("aesthetic", "emotion"):
        accuracy, confusion = hand_metrics(predictor, tmp_path / "data", test_rows, task)
        assert report["metrics"][task]["accuracy"] == pytest.approx(accuracy)
        assert report["metrics"][task]["confusion"] == confusion
        assert set(report["metrics"][task]["recall"]) == set(predictor.classes[task])
        assert 0.0 <= report["metrics"][task]["ece"] <= 1.0
        low, high = report["metrics"][task]["ci"]["accuracy"]  # bootstrap over the 3 test images
        assert low <= accuracy <= high and report["metrics"][task]["ci"]["n"] == 3
    assert report["figures"] == ["confusion_aesthetic.png", "confusion_emotion.png"]
    for name in report["figures"]:
        with Image.open(out / name) as image:
            assert image.format == "PNG"
    assert "macro-F1" in (printed := capsys.readouterr().out) and "95% interval" in printed


def test_a_manifest_without_splits_is_evaluated_whole(version, tmp_path, capsys):
    manifest = write_synthetic_set(tmp_path / "data", 4, size=40)
    assert main(["evaluate", str(version), str(manifest), "--split", "test", "--device", "cpu", "-q"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["images"] == 4
    assert "accuracy" in captured.err


def test_an_absent_split_is_refused_naming_those_present(version, tmp_path, capsys):
    manifest, _ = manifest_with_splits(tmp_path / "data", count=3)
    assert main(["evaluate", str(version), str(manifest), "--split", "val", "--device", "cpu", "-q"]) == 1
    assert "splits present: test, train" in capsys.readouterr().err


def test_unreadable_images_are_skipped_and_counted(version, tmp_path, capsys):
    manifest = write_synthetic_set(tmp_path / "data", 3, size=40)
    (tmp_path / "data" / "img0001.png").write_bytes(b"not an image")
    assert main(["evaluate", str(version), str(manifest), "--device", "cpu", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 2 and len(report["skipped"]) == 1 and ":3: skipped" in report["skipped"][0]
