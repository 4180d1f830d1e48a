"""Version folders: weights.safetensors + model.json, with the weights' sha256 checked on load."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from model.errors import VersionError
from model.network import CrossBranchNet, NetConfig
from model.predictor import Predictor
from model.version import META_FILE, WEIGHTS_FILE, load_version, read_meta, save_version

CONFIG = NetConfig(backbone="resnet18", num_groups=3, fc_width=32,
                   aesthetic_classes=("low", "high"), emotion_classes=("calm", "joy", "anger"))
META = {"init": "imagenet:resnet18-f37072d3.pth", "pixel_mean": [0.4, 0.5, 0.6], "trained": True,
        "metrics": {"aesthetic": {"accuracy": 0.75}}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(3)
    model = CrossBranchNet(CONFIG).eval()
    # move BN statistics off their defaults so buffers are checked too
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("versions") / "v1"
    meta = save_version(folder, model, META)
    return model, folder, meta


def assert_names_only_the_version_file(message: str, path) -> None:
    """The message names the file inside its version folder (it reaches HTTP clients), never
    the server's folders."""
    assert f"{path.parent.name}/{path.name}" in message and str(path.parent.parent) not in message, message


def copy_version(src, dst):
    dst.mkdir()
    for name in (WEIGHTS_FILE, META_FILE):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_round_trip_gives_identical_outputs(saved):
    model, folder, _ = saved
    loaded, meta = load_version(folder)
    assert loaded.config == CONFIG
    loaded.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a1, e1 = model(x)
        a2, e2 = loaded(x)
    assert torch.equal(a1, a2) and torch.equal(e1, e2)
    assert e2.shape == (2, 3)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)


def test_model_json_contents(saved):
    model, folder, returned = saved
    meta = json.loads((folder / META_FILE).read_text())
    assert meta == returned
    assert meta["architecture"] == CONFIG.to_dict()
    assert meta["architecture"]["backbone"] == "resnet18"
    assert meta["architecture"]["num_groups"] == 3
    assert meta["classes"] == {"aesthetic": ["low", "high"], "emotion": ["calm", "joy", "anger"]}
    assert meta["pixel_mean"] == [0.4, 0.5, 0.6]
    assert meta["init"] == "imagenet:resnet18-f37072d3.pth"
    assert meta["metrics"] == {"aesthetic": {"accuracy": 0.75}}
    assert meta["parameters"] == model.parameter_count()
    assert meta["weights_file"] == WEIGHTS_FILE
    digest = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert meta["weights_sha256"] == digest
    assert read_meta(folder) == meta
    # no temporary files left behind by the atomic writes
    assert sorted(p.name for p in folder.iterdir()) == sorted([META_FILE, WEIGHTS_FILE])


def test_flipped_byte_is_refused(saved, tmp_path):
    _, folder, _ = saved
    bad = copy_version(folder, tmp_path / "bad")
    data = bytearray((bad / WEIGHTS_FILE).read_bytes())
    data[-10] ^= 0x01          # inside the tensor data: the file still parses as safetensors
    (bad / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(VersionError, match="sha256") as info:
        load_version(bad)
    assert_names_only_the_version_file(str(info.value), bad / WEIGHTS_FILE)


def test_predictor_refuses_a_bad_hash(saved, tmp_path):
    _, folder, _ = saved
    bad = copy_version(folder, tmp_path / "bad")
    meta = json.loads((bad / META_FILE).read_text())
    meta["weights_sha256"] = "0" * 64
    (bad / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(VersionError, match="sha256"):
        Predictor(bad)


def test_missing_weights_file(saved, tmp_path):
    _, folder, _ = saved
    bad = copy_version(folder, tmp_path / "bad")
    (bad / WEIGHTS_FILE).unlink()
    with pytest.raises(VersionError, match="missing") as info:
        load_version(bad)
    assert WEIGHTS_FILE in str(info.value)


def test_missing_model_json(saved, tmp_path):
    _, folder, _ = saved
    bad = copy_version(folder, tmp_path / "bad")
    (bad / META_FILE).unlink()
    with pytest.raises(VersionError, match="missing") as info:
        load_version(bad)
    assert_names_only_the_version_file(str(info.value), bad / META_FILE)


def test_corrupt_model_json(saved, tmp_path):
    _, folder, _ = saved
    bad = copy_version(folder, tmp_path / "bad")
    text = (bad / META_FILE).read_text()
    (bad / META_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(VersionError, match="cannot be read") as info:
        load_version(bad)
    assert_names_only_the_version_file(str(info.value), bad / META_FILE)


@pytest.mark.parametrize("tail, words", [
    (', "parameters": 1' + "0" * 4300 + "}", "4300 digits"),        # ValueError, not JSONDecodeError
    (', "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),   # RecursionError
])
def test_model_json_that_json_loads_refuses_otherwise(saved, tmp_path, tail, words):
    _, folder, _ = saved
    bad = copy_version(folder, tmp_path / "bad")
    (bad / META_FILE).write_text((bad / META_FILE).read_text().rstrip()[:-1] + tail)
    for read in (read_meta, load_version):
        with pytest.raises(VersionError, match="cannot be read") as info:
            read(bad)
        assert words in str(info.value)
        assert_names_only_the_version_file(str(info.value), bad / META_FILE)


@pytest.mark.parametrize("key", ["architecture", "weights_sha256", "pixel_mean"])
def test_model_json_without_required_key(saved, tmp_path, key):
    _, folder, _ = saved
    bad = copy_version(folder, tmp_path / "bad")
    meta = json.loads((bad / META_FILE).read_text())
    del meta[key]
    (bad / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(VersionError, match=key) as info:
        load_version(bad)
    assert META_FILE in str(info.value)


def test_missing_folder(tmp_path):
    with pytest.raises(VersionError, match="not found") as info:
        load_version(tmp_path / "nope")
    assert "nope" in str(info.value) and str(tmp_path) not in str(info.value)


def test_weights_that_do_not_fit_the_architecture(saved, tmp_path):
    """Consistent hash, but model.json describes another network: refused, naming the file."""
    _, folder, _ = saved
    bad = copy_version(folder, tmp_path / "bad")
    meta = json.loads((bad / META_FILE).read_text())
    meta["architecture"]["num_groups"] = 4
    (bad / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(VersionError, match="does not fit") as info:
        load_version(bad)
    assert WEIGHTS_FILE in str(info.value)


@pytest.mark.parametrize("text", ["null", "[]", "42", '"model"'])
def test_model_json_that_is_not_an_object(saved, tmp_path, text):
    _, folder, _ = saved
    bad = copy_version(folder, tmp_path / "bad")
    (bad / META_FILE).write_text(text)
    with pytest.raises(VersionError) as info:
        load_version(bad)
    assert_names_only_the_version_file(str(info.value), bad / META_FILE)
