"""Training manifests (model.manifest.read_manifest) and loading their images
(model.dataset.load_training_data)."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from PIL import Image

from model.classes import DEFAULT_CLASSES
from model.dataset import load_training_data
from model.errors import ManifestError
from model.manifest import read_manifest

EMOTIONS = DEFAULT_CLASSES["emotion"]


def write_manifest(folder, lines, name="manifest.jsonl"):
    path = folder / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def make_image(path, colour=(200, 100, 50), size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


# --- read_manifest ---------------------------------------------------------------------------

def test_hard_labels_become_one_hot(tmp_path):
    path = write_manifest(tmp_path, [{"image": "a.jpg", "aesthetic": "low", "emotion": "fear"}])
    manifest = read_manifest(path)
    assert manifest.classes == DEFAULT_CLASSES
    row = manifest.rows[0]
    assert row.line == 1
    assert row.targets["aesthetic"].tolist() == [0.0, 1.0]
    assert row.targets["emotion"].tolist() == [1.0 if e == "fear" else 0.0 for e in EMOTIONS]
    assert row.weight == 1.0


def test_unknown_class_names_line_and_value(tmp_path):
    path = write_manifest(tmp_path, [
        {"image": "a.jpg", "aesthetic": "high", "emotion": "awe"},
        "",
        {"image": "b.jpg", "aesthetic": "high", "emotion": "joy"},
    ])
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    message = str(info.value)
    assert f"{path}:3:" in message         # blank lines still count
    assert "'joy'" in message and "emotion" in message


def test_unknown_class_inside_a_distribution(tmp_path):
    path = write_manifest(tmp_path, [{"image": "a.jpg", "aesthetic": {"high": 0.5, "meh": 0.5}}])
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert f"{path}:1:" in str(info.value) and "'meh'" in str(info.value)


@pytest.mark.parametrize("lines", [[], [""], ["", "   "],
                                   [{"classes": {"aesthetic": ["a", "b"], "emotion": ["c", "d"]}}]],
                         ids=["empty", "blank", "whitespace", "header-only"])
def test_no_rows(tmp_path, lines):
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(line) if isinstance(line, dict) else line for line in lines))
    with pytest.raises(ManifestError, match="no rows") as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_bad_json_line(tmp_path):
    path = write_manifest(tmp_path, [{"image": "a.jpg", "aesthetic": "high"},
                                     {"image": "b.jpg", "aesthetic": "low"},
                                     '{"image": "c.jpg", "aesthetic": "high"'])
    with pytest.raises(ManifestError, match="not valid JSON") as info:
        read_manifest(path)
    assert f"{path}:3:" in str(info.value)


def test_row_that_is_not_an_object(tmp_path):
    path = write_manifest(tmp_path, [{"image": "a.jpg", "aesthetic": "high"}, "[1, 2]"])
    with pytest.raises(ManifestError, match="JSON object") as info:
        read_manifest(path)
    assert f"{path}:2:" in str(info.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "none.jsonl")


def test_soft_label_is_normalised(tmp_path):
    path = write_manifest(tmp_path, [{"image": "a.jpg", "aesthetic": {"high": 3, "low": 1},
                                      "emotion": {"awe": 2.0, "fear": 1.0, "sadness": 1.0}}])
    row = read_manifest(path).rows[0]
    assert row.targets["aesthetic"].tolist() == pytest.approx([0.75, 0.25])
    expected = [0.0] * 8
    expected[EMOTIONS.index("awe")] = 0.5
    expected[EMOTIONS.index("fear")] = 0.25
    expected[EMOTIONS.index("sadness")] = 0.25
    assert row.targets["emotion"].tolist() == pytest.approx(expected)
    assert float(row.targets["emotion"].sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("label,problem", [({"high": 0, "low": 0}, "sums to 0"),
                                           ({"high": -1, "low": 2}, ">= 0"),
                                           ({"high": "x"}, ">= 0"),
                                           (3, "class name")])
def test_bad_label_values(tmp_path, label, problem):
    path = write_manifest(tmp_path, [{"image": "a.jpg", "aesthetic": label}])
    with pytest.raises(ManifestError, match=problem) as info:
        read_manifest(path)
    assert f"{path}:1:" in str(info.value)


def test_label_for_one_task_only(tmp_path):
    path = write_manifest(tmp_path, [{"image": "a.jpg", "aesthetic": "high"},
                                     {"image": "b.jpg", "emotion": "awe", "aesthetic": None}])
    rows = read_manifest(path).rows
    assert rows[0].targets["emotion"] is None and rows[0].targets["aesthetic"] is not None
    assert rows[1].targets["aesthetic"] is None and rows[1].targets["emotion"] is not None


def test_row_without_any_label_or_image(tmp_path):
    path = write_manifest(tmp_path, [{"image": "a.jpg"}])
    with pytest.raises(ManifestError, match="no label") as info:
        read_manifest(path)
    assert f"{path}:1:" in str(info.value)
    path = write_manifest(tmp_path, [{"aesthetic": "high"}], name="noimage.jsonl")
    with pytest.raises(ManifestError, match="image"):
        read_manifest(path)


def test_header_classes_are_used(tmp_path):
    header = {"classes": {"aesthetic": ["bad", "ok", "great"], "emotion": ["calm", "tense"]}}
    path = write_manifest(tmp_path, [header, {"image": "a.jpg", "aesthetic": "great", "emotion": "tense"}])
    manifest = read_manifest(path)
    assert manifest.classes == {"aesthetic": ("bad", "ok", "great"), "emotion": ("calm", "tense")}
    row = manifest.rows[0]
    assert row.line == 2
    assert row.targets["aesthetic"].tolist() == [0.0, 0.0, 1.0]
    assert row.targets["emotion"].tolist() == [0.0, 1.0]
    # the default names are now unknown
    bad = write_manifest(tmp_path, [header, {"image": "a.jpg", "aesthetic": "high"}], name="bad.jsonl")
    with pytest.raises(ManifestError, match="'high'"):
        read_manifest(bad)


def test_model_classes_win_over_header(tmp_path):
    header = {"classes": {"aesthetic": ["bad", "great"], "emotion": ["calm", "tense"]}}
    path = write_manifest(tmp_path, [header, {"image": "a.jpg", "aesthetic": "high", "emotion": "awe"}])
    manifest = read_manifest(path, classes=DEFAULT_CLASSES)
    assert manifest.classes == DEFAULT_CLASSES
    assert manifest.rows[0].targets["aesthetic"].tolist() == [1.0, 0.0]


def test_bad_header_classes(tmp_path):
    path = write_manifest(tmp_path, [{"classes": {"aesthetic": ["only"], "emotion": ["a", "b"]}},
                                     {"image": "a.jpg", "emotion": "a"}])
    with pytest.raises(ManifestError, match="at least 2"):
        read_manifest(path)


def test_relative_paths_resolve_against_manifest_folder(tmp_path):
    folder = tmp_path / "data" / "set1"
    folder.mkdir(parents=True)
    absolute = tmp_path / "elsewhere" / "z.png"
    path = write_manifest(folder, [{"image": "img/a.jpg", "aesthetic": "high"},
                                   {"image": "../b.jpg", "aesthetic": "low"},
                                   {"image": str(absolute), "aesthetic": "low"}])
    rows = read_manifest(path).rows
    assert rows[0].image == folder / "img" / "a.jpg"
    assert rows[1].image == folder / ".." / "b.jpg"
    assert rows[2].image == absolute


@pytest.mark.parametrize("weight", ["0", "-1.5", '"2"', "true", "null", "NaN", "Infinity", "[1]"])
def test_bad_weight(tmp_path, weight):
    # `weight` is the JSON text; Python's json accepts NaN and Infinity literals
    raw = f'{{"image": "a.jpg", "aesthetic": "high", "weight": {weight}}}'
    path = write_manifest(tmp_path, [{"image": "b.jpg", "aesthetic": "low"}, raw])
    with pytest.raises(ManifestError, match="weight must be a positive number") as info:
        read_manifest(path)
    assert f"{path}:2:" in str(info.value)


def test_good_weight(tmp_path):
    path = write_manifest(tmp_path, [{"image": "a.jpg", "aesthetic": "high", "weight": 2.5},
                                     {"image": "b.jpg", "aesthetic": "high", "weight": 3}])
    assert [r.weight for r in read_manifest(path).rows] == [2.5, 3.0]


# --- load_training_data ------------------------------------------------------------------------

@pytest.fixture
def dataset_folder(tmp_path):
    make_image(tmp_path / "img" / "a.png", (255, 0, 0))
    make_image(tmp_path / "img" / "c.png", (0, 0, 255), size=(10, 60))
    path = write_manifest(tmp_path, [
        {"image": "img/a.png", "aesthetic": "high", "emotion": {"awe": 1, "fear": 3}, "weight": 2},
        {"image": "img/b_missing.png", "aesthetic": "low"},
        {"image": "img/c.png", "emotion": "sadness"},
    ])
    return path


def test_load_training_data_skips_missing_image_naming_the_row(dataset_folder, caplog):
    manifest = read_manifest(dataset_folder)
    with caplog.at_level(logging.WARNING, logger="model.dataset"):
        data, skipped = load_training_data(manifest, size=32)
    assert len(data) == 2
    assert [r.line for r in data.rows] == [1, 3]
    assert len(skipped) == 1
    assert f"{dataset_folder}:2:" in skipped[0] and "b_missing.png" in skipped[0]
    assert any(f"{dataset_folder}:2:" in r.getMessage() for r in caplog.records)

    assert data.images.shape == (2, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.images[0, :, 5, 5].tolist() == [255, 0, 0]
    assert data.images[1, :, 5, 5].tolist() == [0, 0, 255]
    assert data.targets["aesthetic"].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert data.masks["aesthetic"].tolist() == [1.0, 0.0]
    assert data.masks["emotion"].tolist() == [1.0, 1.0]
    assert data.targets["emotion"][0, EMOTIONS.index("fear")].item() == pytest.approx(0.75)
    assert data.targets["emotion"][1, EMOTIONS.index("sadness")].item() == 1.0
    assert data.weights.tolist() == [2.0, 1.0]


def test_load_training_data_strict_refuses_missing_image(dataset_folder):
    manifest = read_manifest(dataset_folder)
    with pytest.raises(ManifestError) as info:
        load_training_data(manifest, size=32, strict=True)
    assert f"{dataset_folder}:2:" in str(info.value) and "b_missing.png" in str(info.value)


def test_load_training_data_skips_unreadable_and_oversized(tmp_path):
    make_image(tmp_path / "ok.png")
    (tmp_path / "text.png").write_text("not an image")
    make_image(tmp_path / "big.png", size=(300, 300))
    path = write_manifest(tmp_path, [{"image": "ok.png", "aesthetic": "high"},
                                     {"image": "text.png", "aesthetic": "low"},
                                     {"image": "big.png", "aesthetic": "low"}])
    data, skipped = load_training_data(read_manifest(path), size=16, max_pixels=50_000)
    assert len(data) == 1
    assert len(skipped) == 2
    assert f"{path}:2:" in skipped[0] and "not an image" in skipped[0]
    assert f"{path}:3:" in skipped[1] and "limit" in skipped[1]


def test_load_training_data_nothing_readable(tmp_path):
    path = write_manifest(tmp_path, [{"image": "x.png", "aesthetic": "high"}])
    with pytest.raises(ManifestError, match="none of the 1 images"):
        load_training_data(read_manifest(path), size=16)


def test_subset_keeps_rows_aligned(dataset_folder):
    data, _ = load_training_data(read_manifest(dataset_folder), size=16)
    sub = data.subset(torch.tensor([1]))
    assert len(sub) == 1 and sub.rows[0].line == 3
    assert sub.masks["aesthetic"].tolist() == [0.0]
    assert sub.weights.tolist() == [1.0]
    assert torch.equal(sub.images[0], data.images[1])
