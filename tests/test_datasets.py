"""Importers of public datasets, each on a tiny generated replica of its published layout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.cli import main
from model.classes import DEFAULT_CLASSES
from model.datasets import import_dataset
from model.datasets.merge import merge_manifests
from model.errors import DatasetError, ManifestError
from model.manifest import read_manifest

EMOSET_ORDER = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- AVA -----------------------------------------------------------------------------------

def _ava_line(index: int, image_id: int, counts: list[int]) -> str:
    return " ".join(str(v) for v in [index, image_id, *counts, 21, 0, 1396])


AVA_ROWS = {
    953619: [0, 1, 5, 17, 38, 36, 15, 6, 5, 1],     # mean 5.64: high
    953958: [10, 7, 15, 26, 26, 21, 10, 8, 1, 2],   # mean 4.70: low
    954184: [0, 0, 0, 0, 10, 0, 0, 0, 0, 0],        # mean exactly 5: high
    954113: [1, 0, 0, 0, 0, 0, 0, 0, 0, 9],         # in neither list
}


def make_ava(root: Path, lists: bool = True) -> Path:
    (root / "images").mkdir(parents=True)
    text = "\n".join(_ava_line(i, image_id, counts) for i, (image_id, counts) in enumerate(AVA_ROWS.items(), 1))
    (root / "AVA.txt").write_text(text + "\n")
    (root / "tags.txt").write_text("1 Abstract\n")
    (root / "challenges.txt").write_text("1396 100_Meters\n")
    if lists:
        folder = root / "aesthetics_image_lists"
        folder.mkdir()
        (folder / "generic_ls_train.jpgl").write_text("953619\n953958\n")
        (folder / "generic_test.jpgl").write_text("954184\n")
        (folder / "generic_ss_train.jpgl").write_text("953619\n")
    return root


def test_ava_splits_hard_labels_by_mean(tmp_path):
    counts = import_dataset("ava", make_ava(tmp_path / "AVA_dataset"), tmp_path / "out")
    assert counts == {"train": 2, "test": 1}
    train = read_manifest(tmp_path / "out" / "train.jsonl")
    assert [row.image.name for row in train.rows] == ["953619.jpg", "953958.jpg"]
    assert [row.image.parent for row in train.rows] == [(tmp_path / "AVA_dataset" / "images").resolve()] * 2
    assert [_lines(tmp_path / "out" / "train.jsonl")[i]["aesthetic"] for i in (1, 2)] == ["high", "low"]
    assert [row.targets["emotion"] for row in train.rows] == [None, None]
    assert _lines(tmp_path / "out" / "test.jsonl")[1]["aesthetic"] == "high"


def test_ava_soft_targets_are_the_share_of_ratings_above_5(tmp_path):
    import_dataset("ava", make_ava(tmp_path / "ava"), tmp_path / "out", soft=True)
    first = _lines(tmp_path / "out" / "train.jsonl")[1]
    assert first["aesthetic"] == {"high": pytest.approx(63 / 124), "low": pytest.approx(61 / 124)}


def test_ava_without_lists_writes_everything_to_all(tmp_path):
    counts = import_dataset("ava", make_ava(tmp_path / "ava", lists=False), tmp_path / "out")
    assert counts == {"all": 4}
    assert not (tmp_path / "out" / "train.jsonl").exists()


@pytest.mark.parametrize("bad_line, message", [
    ("3 954184 0 0 0", "AVA.txt:3: expected 15 columns"),
    ("3 954184 0 0 0 0 x 0 0 0 0 0 0 0 1", "AVA.txt:3: every column must be a whole number"),
    ("3 954184 0 0 0 0 0 0 0 0 0 0 0 0 1", "AVA.txt:3: image 954184 has no ratings"),
])
def test_ava_broken_line_names_file_and_line_and_leaves_no_manifest(tmp_path, bad_line, message):
    root = make_ava(tmp_path / "ava")
    lines = (root / "AVA.txt").read_text().splitlines()
    lines[2] = bad_line
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=message):
        import_dataset("ava", root, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_ava_missing_index_or_list(tmp_path):
    root = make_ava(tmp_path / "ava")
    (root / "aesthetics_image_lists" / "generic_test.jpgl").unlink()
    with pytest.raises(DatasetError, match="generic_test.jpgl: not found"):
        import_dataset("ava", root, tmp_path / "out")
    (root / "AVA.txt").unlink()
    with pytest.raises(DatasetError, match="AVA.txt: not found"):
        import_dataset("ava", root, tmp_path / "out")


# --- FI ------------------------------------------------------------------------------------

def make_fi(root: Path, folder_name=str.lower) -> Path:
    for emotion in DEFAULT_CLASSES["emotion"]:
        folder = root / folder_name(emotion)
        folder.mkdir(parents=True)
        for i in (1, 2):
            (folder / f"{emotion}_{i:04d}.jpg").write_bytes(b"not opened")
        (folder / "Thumbs.db").write_bytes(b"")
    return root


@pytest.mark.parametrize("folder_name", [str.lower, str.capitalize])
def test_fi_one_row_per_image_with_its_folder_emotion(tmp_path, folder_name):
    counts = import_dataset("fi", make_fi(tmp_path / "FI", folder_name), tmp_path / "out")
    assert counts == {"all": 16}
    manifest = read_manifest(tmp_path / "out" / "all.jsonl")
    rows = _lines(tmp_path / "out" / "all.jsonl")[1:]
    assert {(Path(r["image"]).name.split("_")[0], r["emotion"]) for r in rows} == \
        {(e, e) for e in DEFAULT_CLASSES["emotion"]}
    assert all(row.targets["aesthetic"] is None for row in manifest.rows)


def test_fi_refuses_a_missing_or_unknown_emotion_folder(tmp_path):
    root = make_fi(tmp_path / "FI")
    (root / "joy").mkdir()
    with pytest.raises(DatasetError, match=r"FI/joy: not one of FI's emotion folders"):
        import_dataset("fi", root, tmp_path / "out")
    (root / "joy").rmdir()
    for image in (root / "fear").iterdir():
        image.unlink()
    (root / "fear").rmdir()
    with pytest.raises(DatasetError, match="no folder for fear"):
        import_dataset("fi", root, tmp_path / "out")


# --- EmoSet --------------------------------------------------------------------------------

def make_emoset(root: Path) -> Path:
    root.mkdir(parents=True)
    info = {"emotion": {"label2idx": {name: i for i, name in enumerate(EMOSET_ORDER)},
                        "idx2label": {str(i): name for i, name in enumerate(EMOSET_ORDER)}},
            "brightness": {"label2idx": {"0.0": 0}, "idx2label": {"0": "0.0"}}}
    (root / "info.json").write_text(json.dumps(info))
    for split, emotions in {"train": ["awe", "fear", "sadness"], "val": ["anger"], "test": ["amusement", "awe"]}.items():
        items = [[e, f"{e}_{split}{i:05d}", f"image/{e}/{e}_{split}{i:05d}.jpg",
                  f"annotation/{e}/{e}_{split}{i:05d}.json"] for i, e in enumerate(emotions)]
        (root / f"{split}.json").write_text(json.dumps(items))
    return root


def test_emoset_keeps_its_splits_and_emotion_order(tmp_path):
    counts = import_dataset("emoset", make_emoset(tmp_path / "EmoSet-118K"), tmp_path / "out")
    assert counts == {"train": 3, "val": 1, "test": 2}
    train = _lines(tmp_path / "out" / "train.jsonl")
    assert train[0]["classes"]["emotion"] == EMOSET_ORDER
    assert [r["emotion"] for r in train[1:]] == ["awe", "fear", "sadness"]
    assert train[1]["image"] == str((tmp_path / "EmoSet-118K" / "image/awe/awe_train00000.jpg").resolve())
    assert len(read_manifest(tmp_path / "out" / "test.jsonl").rows) == 2


@pytest.mark.parametrize("split_text, message", [
    ('[["awe", "a", "image/awe/a.jpg"]]', r"train.json: item 1: expected \[emotion"),
    ('[["joy", "a", "image/joy/a.jpg", "annotation/joy/a.json"]]', "train.json: item 1: emotion 'joy'"),
    ('[["awe", "a", "../a.jpg", "annotation/awe/a.json"]]', "train.json: item 1: image path"),
    ('[\n["awe", "a",\n', r"train.json:3: not valid JSON"),
])
def test_emoset_broken_split_file(tmp_path, split_text, message):
    root = make_emoset(tmp_path / "emoset")
    (root / "train.json").write_text(split_text)
    with pytest.raises(DatasetError, match=message):
        import_dataset("emoset", root, tmp_path / "out")


def test_emoset_needs_info_json(tmp_path):
    root = make_emoset(tmp_path / "emoset")
    (root / "info.json").write_text(json.dumps({"emotion": {}}))
    with pytest.raises(DatasetError, match="info.json: no emotion.label2idx"):
        import_dataset("emoset", root, tmp_path / "out")


# --- IEA -----------------------------------------------------------------------------------

IEA_HEADER = "image,emotion," + ",".join(f"r{i}" for i in range(1, 11))


def make_iea(root: Path, lines: list[str], header: str = IEA_HEADER) -> Path:
    root.mkdir(parents=True)
    (root / "iea.csv").write_text("\n".join([header, *lines]) + "\n")
    return root


def test_iea_both_labels_on_every_image(tmp_path):
    root = make_iea(tmp_path / "iea", ["awe/awe_0001.jpg,awe,10,7,7,4,4,4,4,4,4,4",     # mean 5.2: high
                                       "fear/fear_0001.jpg,fear,1,1,4,4,7,7,7,4,4,4"])  # mean 4.3: low
    assert import_dataset("iea", root, tmp_path / "out") == {"all": 2}
    manifest = read_manifest(tmp_path / "out" / "all.jsonl")
    assert [row.targets["aesthetic"].tolist() for row in manifest.rows] == [[1.0, 0.0], [0.0, 1.0]]
    assert [row.targets["emotion"].argmax().item() for row in manifest.rows] == [1, 6]
    assert manifest.rows[0].image == (root / "awe/awe_0001.jpg").resolve()
    import_dataset("iea", root, tmp_path / "soft", soft=True)
    assert _lines(tmp_path / "soft" / "all.jsonl")[1]["aesthetic"] == {"high": 0.3, "low": 0.7}


def test_iea_split_column(tmp_path):
    root = make_iea(tmp_path / "iea", ["a.jpg,awe,10,10,10,10,10,10,10,10,10,10,train",
                                       "b.jpg,fear,1,1,1,1,1,1,1,1,1,1,test"], header=IEA_HEADER + ",split")
    assert import_dataset("iea", root, tmp_path / "out") == {"train": 1, "test": 1}


@pytest.mark.parametrize("line, message", [
    ("a.jpg,awe,10,7,5,4,4,4,4,4,4,4", r"iea.csv:3: ratings must be 10, 7, 4 or 1, got '5'"),
    ("a.jpg,joy,10,7,7,4,4,4,4,4,4,4", r"iea.csv:3: unknown emotion 'joy'"),
    ("a.jpg,awe,10,7,7", r"iea.csv:3: expected 12 columns, got 5"),
])
def test_iea_broken_line(tmp_path, line, message):
    root = make_iea(tmp_path / "iea", ["b.jpg,awe,10,10,10,10,10,10,10,10,10,10", line])
    with pytest.raises(DatasetError, match=message):
        import_dataset("iea", root, tmp_path / "out")


def test_iea_header_is_checked(tmp_path):
    root = make_iea(tmp_path / "iea", ["a.jpg,awe,10,10,10,10,10,10,10,10,10,10"], header="path,emotion")
    with pytest.raises(DatasetError, match="iea.csv:1: header must be"):
        import_dataset("iea", root, tmp_path / "out")


# --- merge and the command line ------------------------------------------------------------

def test_merged_ava_and_emoset_train_each_task_on_its_own_rows(tmp_path):
    import_dataset("ava", make_ava(tmp_path / "ava"), tmp_path / "ava-out")
    import_dataset("emoset", make_emoset(tmp_path / "emoset"), tmp_path / "emoset-out")
    rows = merge_manifests([tmp_path / "ava-out" / "train.jsonl", tmp_path / "emoset-out" / "train.jsonl"],
                           tmp_path / "mixed.jsonl")
    assert rows == 5
    manifest = read_manifest(tmp_path / "mixed.jsonl")
    assert manifest.classes == DEFAULT_CLASSES
    labelled = [(row.targets["aesthetic"] is not None, row.targets["emotion"] is not None) for row in manifest.rows]
    assert labelled == [(True, False)] * 2 + [(False, True)] * 3


def test_merge_refuses_different_class_sets(tmp_path):
    import_dataset("ava", make_ava(tmp_path / "ava"), tmp_path / "ava-out")
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"classes": {"aesthetic": ["good", "bad"], "emotion": EMOSET_ORDER}}) + "\n"
                     + json.dumps({"image": "x.jpg", "aesthetic": "good"}) + "\n")
    with pytest.raises(DatasetError, match=r"other.jsonl:1: aesthetic classes \['good', 'bad'\] differ"):
        merge_manifests([tmp_path / "ava-out" / "train.jsonl", other], tmp_path / "mixed.jsonl")
    assert not (tmp_path / "mixed.jsonl").exists()


def test_cli_imports_and_reports_rows(tmp_path, capsys):
    assert main(["dataset", "emoset", str(make_emoset(tmp_path / "emoset")), "--out", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == {"train": 3, "val": 1, "test": 2}


def test_cli_broken_layout_is_one_error_line(tmp_path, capsys):
    root = make_iea(tmp_path / "iea", ["a.jpg,joy,10,10,10,10,10,10,10,10,10,10"])
    assert main(["dataset", "iea", str(root), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aesemo: error: ") and "iea.csv:2: unknown emotion 'joy'" in err[0]


def test_merge_makes_relative_paths_absolute_and_refuses_bad_rows(tmp_path):
    (tmp_path / "a").mkdir()
    first = tmp_path / "a" / "m.jsonl"
    first.write_text(json.dumps({"image": "photos/x.jpg", "emotion": "awe"}) + "\n")
    assert merge_manifests([first], tmp_path / "mixed.jsonl") == 1
    assert _lines(tmp_path / "mixed.jsonl")[1]["image"] == str((tmp_path / "a" / "photos/x.jpg").resolve())
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"image": "y.jpg", "emotion": "awe"}) + "\n{not json\n")
    with pytest.raises(ManifestError, match=r"broken.jsonl:2: not valid JSON"):
        merge_manifests([first, broken], tmp_path / "other.jsonl")
    assert not (tmp_path / "other.jsonl").exists()
