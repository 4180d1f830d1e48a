"""ImageNet initialisation (docs/developers/method.md, "Training": every layer but each
branch's last FC layer and the cross-branch layers comes from ImageNet VGG16): from a local file,
or downloaded.

The "ImageNet" files here are fakes: torchvision's state dicts filled with seeded random numbers,
in torchvision's cache layout under a temporary TORCH_HOME, or served by a loopback HTTP server
(tests/weights_server.py) under torchvision's hashed file names.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
import torch
from torchvision import models

from backend.cli import main
from backend.serving.registry import base_version_name, ensure_base_version
from canary import Canary
from model import pretrained
from model.classes import DEFAULT_CLASSES
from model.errors import AesemoError
from net import free_port
from weights_server import WeightsServer, hashed_name, weights_bytes
from model.network import CrossBranchNet, NetConfig
from model.pipeline import init_version
from model.pretrained import default_pretrained_path, load_pretrained

VGG16_FILE = "vgg16-397923af.pth"
RESNET18_FILE = "resnet18-f37072fd.pth"   # the published one (ResNet18_Weights.IMAGENET1K_V1)


def fake_state_dict(build, seed: int) -> dict[str, torch.Tensor]:
    """The keys and shapes of a torchvision model's state dict, with seeded random values."""
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in build().state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, dtype) in shapes.items():
        if dtype.is_floating_point:
            out[key] = torch.randn(shape, generator=generator, dtype=dtype)
        else:
            out[key] = torch.randint(0, 100, shape, generator=generator, dtype=dtype)
    return out


def checkpoints(torch_home):
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def vgg16_loaded(tmp_path_factory):
    """A real two-branch VGG16 after load_pretrained from the default (TORCH_HOME) location."""
    torch_home = tmp_path_factory.mktemp("torch_home")
    source = fake_state_dict(lambda: models.vgg16(weights=None), seed=11)
    torch.save(source, checkpoints(torch_home) / VGG16_FILE)
    # Building two real VGG16 branches costs ~8 s of random init on 2 cores, all of it thrown
    # away by the load. Build on the meta device, allocate, and initialise only what the load
    # must leave alone (each branch's fc3 and the cross-branch layers: the patent's random
    # init); every other tensor is garbage until load_pretrained overwrites it, so a tensor
    # the load missed cannot pass the equality checks below by accident.
    with torch.device("meta"):
        model = CrossBranchNet(NetConfig(backbone="vgg16", cross_init="random"))
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    for module in [model.branch_a.head.fc3, model.branch_e.head.fc3, *model.cross.modules()]:
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    before = {"fc3_a": snapshot(model.branch_a.head.fc3), "fc3_e": snapshot(model.branch_e.head.fc3),
              "cross": snapshot(model.cross)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        assert default_pretrained_path("vgg16") == torch_home / "hub" / "checkpoints" / VGG16_FILE
        init = load_pretrained(model)
    return model, source, before, init, torch_home


VGG16_CONV_INDICES = {0: 0, 2: 0, 5: 1, 7: 1, 10: 2, 12: 2, 14: 2, 17: 3, 19: 3, 21: 3, 24: 4, 26: 4, 28: 4}


def test_vgg16_init_string(vgg16_loaded):
    _, _, _, init, _ = vgg16_loaded
    assert init.startswith("imagenet:")
    assert init == f"imagenet:{VGG16_FILE}"


@pytest.mark.parametrize("branch", ["branch_a", "branch_e"])
def test_vgg16_every_conv_layer_comes_from_the_file(vgg16_loaded, branch):
    model, source, _, _, _ = vgg16_loaded
    state = model.state_dict()
    assert len(VGG16_CONV_INDICES) == 13
    for index, group in VGG16_CONV_INDICES.items():
        for param in ("weight", "bias"):
            ours = state[f"{branch}.groups.{group}.{index}.{param}"]
            assert torch.equal(ours, source[f"features.{index}.{param}"]), (branch, index, param)


@pytest.mark.parametrize("branch", ["branch_a", "branch_e"])
def test_vgg16_fc1_and_fc2_come_from_the_file(vgg16_loaded, branch):
    model, source, _, _, _ = vgg16_loaded
    head = getattr(model, branch).head
    assert torch.equal(head.fc1.weight, source["classifier.0.weight"])
    assert torch.equal(head.fc1.bias, source["classifier.0.bias"])
    assert torch.equal(head.fc2.weight, source["classifier.3.weight"])
    assert torch.equal(head.fc2.bias, source["classifier.3.bias"])


def test_vgg16_last_fc_and_cross_layers_are_not_from_the_file(vgg16_loaded):
    model, source, before, _, _ = vgg16_loaded
    # untouched by the load ...
    for name, module in (("fc3_a", model.branch_a.head.fc3), ("fc3_e", model.branch_e.head.fc3),
                         ("cross", model.cross)):
        after = module.state_dict()
        assert after.keys() == before[name].keys()
        for key, value in before[name].items():
            assert torch.equal(after[key], value), (name, key)
    # ... and nothing like ImageNet's 1000-way layer
    fc3 = model.branch_a.head.fc3.weight
    assert fc3.shape == (2, 4096)
    assert not torch.equal(fc3, source["classifier.6.weight"][:2])
    # the random init really is random, not a copy of anything in the file
    sources = {tuple(v.shape): v for v in source.values()}
    for layer in model.cross:
        w = layer.to_a.weight
        assert tuple(w.shape) not in sources or not torch.equal(w, sources[tuple(w.shape)])
        assert float(w.detach().std()) > 0


def test_vgg16_branches_hold_equal_but_separate_tensors(vgg16_loaded):
    model, _, _, _, _ = vgg16_loaded
    a = model.branch_a.groups[0][0].weight
    e = model.branch_e.groups[0][0].weight
    assert torch.equal(a, e)
    assert a.data_ptr() != e.data_ptr()     # training one branch must not move the other


def test_vgg16_file_into_a_model_of_other_shape_is_an_error(vgg16_loaded):
    """vgg16 weights cannot fill fc1 of a narrower head: refused, not half-loaded."""
    _, _, _, _, torch_home = vgg16_loaded
    with torch.device("meta"):
        narrow = CrossBranchNet(NetConfig(backbone="vgg16", fc_width=256))
    with pytest.raises(AesemoError, match="does not fit backbone vgg16"):
        load_pretrained(narrow, checkpoints(torch_home) / VGG16_FILE)


def test_vgg16_file_for_resnet18_is_an_error(vgg16_loaded):
    _, _, _, _, torch_home = vgg16_loaded
    model = CrossBranchNet(NetConfig(backbone="resnet18", fc_width=16))
    with pytest.raises(AesemoError, match="resnet18"):
        load_pretrained(model, checkpoints(torch_home) / VGG16_FILE)


# --- other backbones and files ---------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch_home = tmp_path_factory.mktemp("torch_home_r18")
    source = fake_state_dict(lambda: models.resnet18(weights=None), seed=5)
    path = checkpoints(torch_home) / RESNET18_FILE
    torch.save(source, path)
    return torch_home, path, source


def test_resnet18_conv_and_bn_statistics_loaded(resnet18_file, monkeypatch):
    torch_home, _, source = resnet18_file
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    model = CrossBranchNet(NetConfig(backbone="resnet18", num_groups=3, fc_width=16))
    fc3_before = model.branch_e.head[-1].weight.detach().clone()
    assert load_pretrained(model) == f"imagenet:{RESNET18_FILE}"
    state = model.state_dict()
    for branch in ("branch_a", "branch_e"):
        assert torch.equal(state[f"{branch}.groups.0.conv1.weight"], source["conv1.weight"])
        assert torch.equal(state[f"{branch}.groups.0.bn1.running_var"], source["bn1.running_var"])
        assert torch.equal(state[f"{branch}.groups.1.layer2.0.downsample.0.weight"],
                           source["layer2.0.downsample.0.weight"])
        assert torch.equal(state[f"{branch}.groups.2.layer3.1.conv2.weight"], source["layer3.1.conv2.weight"])
    assert not any(k.startswith("branch_a.groups.3") for k in state)     # num_groups = 3
    assert torch.equal(model.branch_e.head[-1].weight, fc3_before)


def test_resnet18_file_for_vgg16_is_an_error(resnet18_file):
    _, path, _ = resnet18_file
    with torch.device("meta"):
        model = CrossBranchNet(NetConfig(backbone="vgg16"))
    with pytest.raises(AesemoError, match="vgg16"):
        load_pretrained(model, path)


def test_vgg16_bn_file_for_vgg16_is_an_error(tmp_path):
    """Same family, different layer layout (BatchNorm after each conv): refused."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in models.vgg16_bn(weights=None).features.state_dict().items()}
    source = {f"features.{k}": torch.zeros(s) for k, s in shapes.items()}
    path = tmp_path / "vgg16_bn.pth"
    torch.save(source, path)
    with torch.device("meta"):
        model = CrossBranchNet(NetConfig(backbone="vgg16"))
    with pytest.raises(AesemoError, match="does not fit"):
        load_pretrained(model, path)


def test_missing_default_file_falls_back_to_random_with_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = CrossBranchNet(NetConfig(backbone="resnet18", num_groups=2, fc_width=16))
    before = snapshot(model)
    with caplog.at_level(logging.WARNING, logger="model.pretrained"):
        assert load_pretrained(model) == "random"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("init: random" in r.getMessage() for r in warnings)
    assert any(str(tmp_path) in r.getMessage() for r in warnings)   # says where it looked
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_explicit_missing_path_is_an_error(tmp_path):
    model = CrossBranchNet(NetConfig(backbone="resnet18", num_groups=2, fc_width=16))
    missing = tmp_path / "nowhere" / "vgg16.pth"
    with pytest.raises(AesemoError, match="not found") as info:
        load_pretrained(model, missing)
    assert str(missing) in str(info.value)


def test_unreadable_file_is_an_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    model = CrossBranchNet(NetConfig(backbone="resnet18", num_groups=2, fc_width=16))
    with pytest.raises(AesemoError, match="cannot be read"):
        load_pretrained(model, bad)


# --- pipeline: the init recorded in a fresh version ---------------------------------------------

def test_init_version_records_random_init_without_file(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    out = tmp_path / "v1"
    with caplog.at_level(logging.WARNING):
        meta = init_version(out, NetConfig(backbone="resnet18", num_groups=2, fc_width=16))
    assert meta["init"] == "random"
    assert meta["trained"] is False
    on_disk = json.loads((out / "model.json").read_text())
    assert on_disk["init"] == "random"
    assert on_disk["architecture"]["backbone"] == "resnet18"
    assert any("init: random" in r.getMessage() for r in caplog.records)


def test_init_version_records_imagenet_init_with_file(resnet18_file, tmp_path, monkeypatch):
    torch_home, _, _ = resnet18_file
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    meta = init_version(tmp_path / "v1", NetConfig(backbone="resnet18", num_groups=2, fc_width=16))
    assert meta["init"] == f"imagenet:{RESNET18_FILE}"
    switched_off = init_version(tmp_path / "v2", NetConfig(backbone="resnet18", num_groups=2, fc_width=16),
                                use_pretrained=False)
    assert switched_off["init"] == "random"


# --- downloads: torchvision's URL table or the URL setting, against a loopback server ----------

SMALL = NetConfig(backbone="resnet18", num_groups=2, fc_width=16)


@pytest.fixture(scope="module")
def resnet18_body():
    return weights_bytes(fake_state_dict(lambda: models.resnet18(weights=None), seed=7))


@pytest.fixture
def weights_server():
    with WeightsServer() as server:
        yield server


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def cached_files(torch_home) -> list[str]:
    folder = torch_home / "hub" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_url_setting_downloads_into_torch_home_once(weights_server, resnet18_body, torch_home, tmp_path):
    name = hashed_name("resnet18", resnet18_body)
    url = weights_server.add(name, resnet18_body)
    meta = init_version(tmp_path / "v1", SMALL, pretrained=url)
    assert meta["init"] == f"imagenet:{name}"
    assert cached_files(torch_home) == [name]
    assert (torch_home / "hub" / "checkpoints" / name).read_bytes() == resnet18_body
    init_version(tmp_path / "v2", SMALL, pretrained=url)
    assert weights_server.requests == 1      # the second start reads the cache


def test_default_downloads_torchvision_weights_of_the_backbone(weights_server, resnet18_body, torch_home,
                                                               tmp_path, monkeypatch):
    url = weights_server.add(hashed_name("resnet18", resnet18_body), resnet18_body)
    monkeypatch.setitem(pretrained.IMAGENET_URLS, "resnet18", url)
    assert not pretrained.weights_on_disk("resnet18", None)
    model = CrossBranchNet(SMALL)
    assert load_pretrained(model).startswith("imagenet:resnet18-")
    assert pretrained.weights_on_disk("resnet18", None)
    source = torch.load(torch_home / "hub" / "checkpoints" / hashed_name("resnet18", resnet18_body))
    assert torch.equal(model.branch_a.groups[0].conv1.weight, source["conv1.weight"])


@pytest.mark.parametrize("truncate", [False, True], ids=["wrong hash", "truncated transfer"])
def test_failed_download_of_a_named_url_is_refused_and_leaves_no_file(weights_server, resnet18_body,
                                                                       torch_home, truncate):
    # a wrong hash: the file name's prefix does not match; a truncated one: half the bytes, then EOF
    name = hashed_name("resnet18", resnet18_body) if truncate else "resnet18-00000000.pth"
    url = weights_server.add(name, resnet18_body, truncate=truncate)
    with pytest.raises(AesemoError, match="download of ImageNet weights") as info:
        load_pretrained(CrossBranchNet(SMALL), url)
    assert url in str(info.value) and "\n" not in str(info.value)
    assert cached_files(torch_home) == []    # neither the target nor torch.hub's .partial file


def test_failed_default_download_starts_random_with_one_line(weights_server, resnet18_body, torch_home,
                                                             tmp_path, monkeypatch, caplog):
    url = weights_server.add("resnet18-00000000.pth", resnet18_body)
    monkeypatch.setitem(pretrained.IMAGENET_URLS, "resnet18", url)
    with caplog.at_level(logging.INFO):
        meta = init_version(tmp_path / "v", SMALL)
    assert meta["init"] == "random"
    assert json.loads((tmp_path / "v" / "model.json").read_text())["init"] == "random"
    assert len(warnings_of(caplog)) == 1 and "init: random" in warnings_of(caplog)[0]
    assert cached_files(torch_home) == []


def test_server_down_starts_random_with_one_line(torch_home, tmp_path, caplog):
    # the autouse fixture points torchvision's URLs at a closed loopback port
    with caplog.at_level(logging.INFO):
        meta = init_version(tmp_path / "v", SMALL)
    assert meta["init"] == "random"
    [line] = warnings_of(caplog)
    assert "init: random" in line and "aesemo fetch-weights" in line
    assert cached_files(torch_home) == []


def test_none_starts_random_without_a_request(weights_server, torch_home, tmp_path, monkeypatch):
    monkeypatch.setitem(pretrained.IMAGENET_URLS, "resnet18", weights_server.url("resnet18-00000000.pth"))
    assert init_version(tmp_path / "v", SMALL, pretrained="None")["init"] == "random"
    assert weights_server.requests == 0


def test_offline_makes_no_request(torch_home, tmp_path, monkeypatch, capsys):
    with Canary() as canary:
        monkeypatch.setitem(pretrained.IMAGENET_URLS, "resnet18", f"{canary.base}/resnet18-f37072fd.pth")
        monkeypatch.setenv("AESEMO_OFFLINE", "1")
        assert main(["init", "--out", str(tmp_path / "v"), "--backbone", "resnet18"]) == 0
        assert json.loads(capsys.readouterr().out)["init"] == "random"
        # a named URL cannot be had offline: one line, still no request
        assert main(["init", "--out", str(tmp_path / "v2"), "--backbone", "resnet18",
                     "--pretrained", f"{canary.base}/resnet18-f37072fd.pth"]) == 1
        assert "AESEMO_OFFLINE" in capsys.readouterr().err
        assert canary.hits == 0


@pytest.mark.parametrize("command", [["serve"], ["worker", "--burst"]])
@pytest.mark.parametrize("setting", ["missing path", "unreachable URL"])
def test_bad_setting_stops_the_start_with_one_line(command, setting, tmp_path, torch_home, monkeypatch, capsys):
    value = str(tmp_path / "nowhere.pth") if setting == "missing path" else \
        f"http://127.0.0.1:{free_port()}/vgg16-397923af.pth"
    monkeypatch.setenv("AESEMO_PRETRAINED", value)
    monkeypatch.setenv("AESEMO_DATA_DIR", str(tmp_path / "data"))
    assert main(command) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aesemo: error:") and value in err[0]
    assert not (tmp_path / "data").exists()      # nothing started


def test_fetch_weights_fills_the_cache(weights_server, resnet18_body, torch_home, monkeypatch, capsys):
    url = weights_server.add(hashed_name("resnet18", resnet18_body), resnet18_body)
    monkeypatch.setitem(pretrained.IMAGENET_URLS, "resnet18", url)
    assert main(["fetch-weights", "--backbone", "resnet18"]) == 0
    assert json.loads(capsys.readouterr().out)["file"].endswith(hashed_name("resnet18", resnet18_body))
    assert cached_files(torch_home) == [hashed_name("resnet18", resnet18_body)]


def test_base_version_is_named_by_the_weights_it_got(settings, weights_server, resnet18_body, torch_home,
                                                      monkeypatch):
    url = weights_server.add(hashed_name("resnet18", resnet18_body), resnet18_body)
    monkeypatch.setitem(pretrained.IMAGENET_URLS, "resnet18", url)
    classes = {k: list(v) for k, v in DEFAULT_CLASSES.items()}
    assert base_version_name(settings, classes) == "base-resnet18-random-untrained"   # nothing on disk yet
    ref = ensure_base_version(settings, classes)
    assert ref.name == base_version_name(settings, classes) == "base-resnet18-imagenet-untrained"
    assert json.loads((ref.folder / "model.json").read_text())["init"].startswith("imagenet:")


def test_none_setting_gives_a_random_base_version(settings, torch_home):
    """`AESEMO_PRETRAINED=none` once made every /predict fail ("pretrained weights file none not found")."""
    settings = replace(settings, pretrained_path="none")
    classes = {k: list(v) for k, v in DEFAULT_CLASSES.items()}
    ref = ensure_base_version(settings, classes)
    assert ref.name == base_version_name(settings, classes) == "base-resnet18-random-untrained"
    assert json.loads((ref.folder / "model.json").read_text())["init"] == "random"
