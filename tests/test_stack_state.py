"""The parts of `aesemo stack` that need no server: its state file, the sample photos, the names
of uploaded files, and the refusals (busy port, lost state, a second stack on one data dir).
The whole stack against a real Label Studio is tests/e2e/test_stack.py."""

from __future__ import annotations

import json
import socket
import stat
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from backend.tools.demo_project import (LABEL_CONFIG, SAMPLE_PHOTOS, load_or_create_state, pre_annotate,
                                         sample_photos, show_the_suggestion_line, uploaded_name)
from backend.tools.processes import StackError
from backend.tools.stack import StackOptions, _only_stack_of, check_ports_free, default_ls_venv

ROOT = Path(__file__).resolve().parents[1]

from net import free_port


def test_state_is_created_once_private_and_reused(tmp_path):
    options = StackOptions(data_dir=tmp_path)
    state = load_or_create_state(options)
    assert state["admin"]["email"] == "admin@example.com" and len(state["admin"]["token"]) == 40
    assert [a["email"] for a in state["annotators"]] == [f"annotator{i}@example.com" for i in (1, 2, 3)]
    assert len({a["password"] for a in state["annotators"]} | {state["admin"]["password"]}) == 4
    assert state["project_id"] is None
    assert stat.S_IMODE(options.state_path.stat().st_mode) == 0o600
    assert load_or_create_state(options) == state == json.loads(options.state_path.read_text())


def test_a_database_without_its_state_is_refused(tmp_path):
    options = StackOptions(data_dir=tmp_path)
    options.ls_data_dir.mkdir()
    (options.ls_data_dir / "label_studio.sqlite3").write_bytes(b"")
    with pytest.raises(StackError, match="stack.json"):
        load_or_create_state(options)


def test_sample_photos_are_real_images_from_the_installed_package():
    photos = sample_photos()
    assert [p.name for p in photos] == list(SAMPLE_PHOTOS)
    for photo in photos:
        with Image.open(photo) as image:
            assert min(image.size) >= 256, (photo, image.size)


@pytest.mark.parametrize("url, name", [
    ("/data/upload/1/ca16892c-astronaut.png", "astronaut.png"),
    ("/data/upload/3/0f1e2d3c-motorcycle_left.png", "motorcycle_left.png"),
    ("http://127.0.0.1:8080/data/upload/1/deadbeef-hubble_deep_field.jpg", "hubble_deep_field.jpg"),
    ("/data/upload/1/my-photo.png", "my-photo.png"),
])
def test_uploaded_name_drops_label_studios_prefix(url, name):
    assert uploaded_name({"data": {"image": url}}) == name


def test_a_busy_port_is_refused_with_the_flag_to_change(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StackError, match="--backend-port"):
            check_ports_free(StackOptions(data_dir=tmp_path, ls_port=free_port(), backend_port=port))


def test_one_stack_per_data_directory(tmp_path):
    with _only_stack_of(tmp_path), pytest.raises(StackError, match="another aesemo stack"), _only_stack_of(tmp_path):
        pass
    with _only_stack_of(tmp_path):  # free again
        pass


def test_the_label_config_ships_in_the_package():
    """The stack reads the label config from the package (it works installed, without the
    repository); label_config/ is where the docs send people, and links to that one copy."""
    assert LABEL_CONFIG.read_text() == (ROOT / "label_config" / "aesthetic_emotion.xml").read_text()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert LABEL_CONFIG.name in package_data["backend.labelstudio"]


def test_label_studio_venv_default(tmp_path):
    checkout, installed = tmp_path / "checkout", tmp_path / "site-packages"
    checkout.mkdir()
    (checkout / "pyproject.toml").touch()
    assert default_ls_venv(tmp_path / "data", checkout) == checkout / ".venv-ls"
    assert default_ls_venv(tmp_path / "data", installed) == tmp_path / "data" / ".venv-ls"
    assert StackOptions(data_dir=tmp_path / "data", ls_venv=tmp_path / "ls").ls_venv == tmp_path / "ls"


class RecordedLabelStudio:
    """Label Studio's answers to the calls `pre_annotate` makes, as recorded, and the calls it got."""

    def __init__(self, model_version: str):
        self.model_version = model_version
        self.retrieved = []

    def ml_backends(self, project_id):
        return [{"id": 1, "project": project_id, "model_version": self.model_version}]

    def retrieve_predictions(self, project_id, task_ids=None):
        self.retrieved.append(task_ids)
        return {"processed_items": 1}

    def tasks(self, project_id):
        return [{"id": 1, "total_predictions": 1}]


@pytest.mark.parametrize("suggest_untrained", ["", "1"])
def test_the_stack_asks_for_no_suggestions_from_an_untrained_version_and_says_when_they_start(
        monkeypatch, capsys, suggest_untrained):
    monkeypatch.setenv("AESEMO_SUGGEST_UNTRAINED", suggest_untrained)
    label_studio = RecordedLabelStudio("base-resnet18-random-untrained")
    pre_annotate(label_studio, 1)
    said = capsys.readouterr().out
    if suggest_untrained:
        assert label_studio.retrieved == [None] and "1 of 1 photos carry" in said
    else:
        assert label_studio.retrieved == []
        assert "suggestions start after the first training" in said and "base-resnet18-random-untrained" in said


def test_the_stack_pre_annotates_with_a_trained_version(capsys):
    label_studio = RecordedLabelStudio("v0001-20261128000000")
    pre_annotate(label_studio, 1)
    assert label_studio.retrieved == [None]


class RecordedProject:
    """Label Studio's project record as `show_the_suggestion_line` reads it, and the updates it gets."""

    def __init__(self, label_config: str):
        self.label_config, self.updates = label_config, []

    def project(self, project_id):
        return {"id": project_id, "label_config": self.label_config}

    def update_project(self, project_id, **fields):
        self.updates.append(fields)
        self.label_config = fields.get("label_config", self.label_config)


def test_a_reused_demo_project_without_the_suggestion_line_gets_the_shipped_config(capsys):
    before = LABEL_CONFIG.read_text().replace('<Header value="$aesemo_suggestion"', '<Header value="Model"')
    earlier = RecordedProject(before)
    show_the_suggestion_line(earlier, 4)
    assert earlier.updates == [{"label_config": LABEL_CONFIG.read_text()}]
    assert "label config updated" in capsys.readouterr().out
    current = RecordedProject(LABEL_CONFIG.read_text())
    show_the_suggestion_line(current, 4)
    assert current.updates == []
