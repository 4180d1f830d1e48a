"""A base model per deployment: `aesemo base set DIR | none`, AESEMO_BASE_MODEL, and projects
with matching class lists starting from it and serving it until they have their own version."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from backend.cli import main
from backend.core import keys
from backend.core.errors import Conflict
from backend.core.settings import Settings
from backend.serving.registry import (REGISTERED_PREFIX, prepare_start, base_ref, describe_base, register_base, resolve_current,
                                      set_current_version)
from backend.training.job import _parent
from model.classes import DEFAULT_CLASSES
from model.network import CrossBranchNet, NetConfig
from model.version import save_version

CLASSES = {task: list(names) for task, names in DEFAULT_CLASSES.items()}
OTHER_CLASSES = {"aesthetic": ["low", "high"], "emotion": ["calm", "joy"]}


def write_version(folder: Path, trained: bool = True, classes: dict = CLASSES) -> Path:
    torch.manual_seed(0)
    model = CrossBranchNet(NetConfig(backbone="mobilenet_v3_small", fc_width=16,
                                     aesthetic_classes=tuple(classes["aesthetic"]),
                                     emotion_classes=tuple(classes["emotion"])))
    save_version(folder, model, {"init": "random", "pixel_mean": [0.5, 0.5, 0.5], "trained": trained})
    return folder


@pytest.fixture
def trained(tmp_path) -> Path:
    return write_version(tmp_path / "ava-fi-v1")


def test_register_a_trained_version_and_unregister(redis_client, settings, trained):
    answer = register_base(redis_client, trained)
    assert answer == {"base_model": str(trained.resolve()), "name": REGISTERED_PREFIX + "ava-fi-v1"}
    assert describe_base(redis_client, settings)["label"] == "base model ava-fi-v1 (registered)"
    register_base(redis_client, None)
    assert redis_client.get(keys.BASE_MODEL) is None and describe_base(redis_client, settings) is None


def test_an_untrained_or_missing_folder_is_refused_in_one_line(redis_client, tmp_path):
    with pytest.raises(Conflict, match="untrained version") as untrained:
        register_base(redis_client, write_version(tmp_path / "v0", trained=False))
    with pytest.raises(Conflict, match="not found") as missing:
        register_base(redis_client, tmp_path / "nowhere")
    assert "\n" not in str(untrained.value) + str(missing.value)
    assert redis_client.get(keys.BASE_MODEL) is None


def test_weights_that_fail_their_hash_are_refused(redis_client, trained):
    weights = trained / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(Conflict, match="sha256"):
        register_base(redis_client, trained)


def test_projects_with_matching_classes_serve_it_until_they_have_their_own(redis_client, settings, trained):
    register_base(redis_client, trained)
    served = resolve_current(redis_client, settings, "7", CLASSES)
    assert (served.name, served.folder) == (REGISTERED_PREFIX + "ava-fi-v1", trained.resolve())
    assert base_ref(redis_client, settings, CLASSES).name == served.name
    assert base_ref(redis_client, settings, OTHER_CLASSES).name.startswith("base-resnet18-")
    set_current_version(redis_client, "7", "v-own")
    assert resolve_current(redis_client, settings, "7", CLASSES).name == "v-own"


def test_training_starts_from_the_registered_base(redis_client, settings, trained):
    register_base(redis_client, trained)
    parent, meta = _parent(settings, redis_client, "8", CLASSES)
    assert parent.folder == trained.resolve() and meta["trained"] is True


def test_the_setting_wins_over_the_command(redis_client, settings, trained, tmp_path):
    register_base(redis_client, trained)
    other = write_version(tmp_path / "container-base")
    from_setting = replace(settings, base_model=other)
    assert resolve_current(redis_client, from_setting, "9", CLASSES).folder == other
    assert describe_base(redis_client, from_setting)["registered_by"] == "setting"


def test_a_bad_setting_stops_at_start_up(tmp_path, settings):
    with pytest.raises(ValueError, match="AESEMO_BASE_MODEL.*not found"):
        Settings(base_model=tmp_path / "missing")
    untrained = replace(settings, base_model=write_version(tmp_path / "untrained", trained=False))
    with pytest.raises(ValueError, match="AESEMO_BASE_MODEL.*untrained version"):
        prepare_start(untrained)


def test_base_command(redis_url, tmp_path, trained, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("AESEMO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("AESEMO_BASE_MODEL", raising=False)
    assert main(["base", "set", str(trained)]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == REGISTERED_PREFIX + "ava-fi-v1"
    assert main(["base", "set", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["base", "set", "none"]) == 0
    capsys.readouterr()
    assert main(["base", "show"]) == 0
    assert json.loads(capsys.readouterr().out) is None


def test_label_studio_versions_and_admin_page_name_it(redis_client, settings, trained):
    from backend.http.app import create_app
    from training_project import setup_answer, setup_project
    register_base(redis_client, trained)
    client = create_app(settings).test_client()
    setup_project(client, 5)
    assert setup_answer(client, 5) == REGISTERED_PREFIX + "ava-fi-v1"
    assert client.get("/versions").get_json()["base_model"]["registered_by"] == "command"
    listing = client.get("/projects/5/versions").get_json()
    assert listing["current"] == REGISTERED_PREFIX + "ava-fi-v1"
    assert listing["base_model"]["label"] == "base model ava-fi-v1 (registered)"
    page = client.get("/?project=5").get_data(as_text=True)
    assert "base model ava-fi-v1 (registered): not yet trained on this project" in page
