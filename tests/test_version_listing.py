"""A model.json of the wrong shape is skipped everywhere, named with its reason: the version
listings, the admin page, promotion and the hot swap. And the hot swap tries a refused version
again once its files change.

Real pieces only: the session's redis-server (conftest), the Flask test client, versions on disk.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace

import pytest

from backend.core import keys
from backend.serving import registry
from backend.http.app import create_app
from backend.serving.hotswap import HotSwap
from backend.serving.models import ModelCache
from backend.serving.registry import project_versions_dir
from backend.core.settings import Settings
from model.version import META_FILE, WEIGHTS_FILE

from training_project import flip_a_byte, setup_project, write_small_version

PROJECT = 7
GOOD = "v0001-good"


def meta_of(folder) -> dict:
    return json.loads((folder / META_FILE).read_text())


# name -> how its model.json is spoiled, and a word the reason must hold
BAD = {
    "v0002-list": (lambda meta: [], "JSON object"),
    "v0003-metrics-text": (lambda meta: {**meta, "metrics": "x"}, "'metrics'"),
    "v0004-metric-nan": (lambda meta: {**meta, "metrics": {"aesthetic": {"macro_f1": float("nan")}}},
                         "metrics.aesthetic.macro_f1"),
    "v0005-task-text": (lambda meta: {**meta, "metrics": {"aesthetic": "good"}}, "metrics.aesthetic"),
    "v0006-snapshot-number": (lambda meta: {**meta, "snapshot_id": 5}, "snapshot_id"),
    "v0007-seconds-text": (lambda meta: {**meta, "training": {"seconds": "x"}}, "training.seconds"),
    "v0008-created-number": (lambda meta: {**meta, "created_at": 5}, "created_at"),
    "v0009-classes-text": (lambda meta: {**meta, "classes": "x"}, "'classes'"),
    "v0010-architecture-list": (lambda meta: {**meta, "architecture": []}, "architecture"),
    "v0011-weights-elsewhere": (lambda meta: {**meta, "weights_file": "../v0001-good/weights.safetensors"},
                                "weights_file"),
    "v0012-mean-text": (lambda meta: {**meta, "pixel_mean": "grey"}, "pixel_mean"),
    "v0013-crossval-seconds-text": (lambda meta: {**meta, "training": {"crossval": {"seconds": "x"}}},
                                    "training.crossval.seconds"),
    "v0014-precision-number": (lambda meta: {**meta, "training": {"precision": 16}}, "training.precision"),
    "v0015-crossval-list": (lambda meta: {**meta, "training": {"crossval": []}}, "training.crossval"),
    # text json.loads refuses with ValueError or RecursionError, not JSONDecodeError
    "v0016-huge-integer": (lambda meta: json.dumps(meta)[:-1] + ', "parameters": 1' + "0" * 4300 + "}",
                           "4300 digits"),
    "v0017-deep-nesting": (lambda meta: json.dumps(meta)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
                           "nested too deeply"),
    "v0018-not-utf8": (lambda meta: json.dumps(meta).encode("utf-16"), "cannot be read"),
}


def spoiled_text(spoil, meta) -> str | bytes:
    """model.json's new content: what `spoil` made, JSON-encoded unless it is text already."""
    spoiled = spoil(meta)
    return spoiled if isinstance(spoiled, (str, bytes)) else json.dumps(spoiled)


def assert_no_server_path(text: str, settings) -> None:
    """Messages that reach HTTP clients name a version's file inside its folder, never where the
    data directory is."""
    assert str(settings.data_dir) not in text and str(settings.data_dir.resolve()) not in text, text


@pytest.fixture(scope="module")
def listed_settings(tmp_path_factory, redis_url):
    settings = replace(Settings(), data_dir=tmp_path_factory.mktemp("listing") / "data", redis_url=redis_url,
                       backbone="resnet18", suggest_untrained=True, inference_path="pytorch")
    folder = project_versions_dir(settings, str(PROJECT))
    write_small_version(folder / GOOD, seed=1, created_at="2026-01-01T00:00:00Z")
    for name, (spoil, _) in BAD.items():
        shutil.copytree(folder / GOOD, folder / name)
        text = spoiled_text(spoil, meta_of(folder / name))
        (folder / name / META_FILE).write_bytes(text if isinstance(text, bytes) else text.encode())
    return settings


@pytest.fixture
def listed(listed_settings, redis_client):
    client = create_app(listed_settings).test_client()
    setup_project(client, PROJECT)
    return client, listed_settings


def test_project_versions_skip_and_name_each_bad_one(listed, caplog, monkeypatch):
    client, settings = listed
    monkeypatch.setattr(registry, "_LOGGED", set())  # as in a fresh process
    with caplog.at_level(logging.WARNING, logger="backend.serving.registry"):
        answer = client.get(f"/projects/{PROJECT}/versions")
        again = client.get(f"/projects/{PROJECT}/versions")
    assert answer.status_code == 200, answer.get_data(as_text=True)[:500]
    body = answer.get_json()
    assert [v["version"] for v in body["versions"]] == [GOOD]
    reasons = {s["version"]: s["reason"] for s in body["skipped"]}
    assert set(reasons) == set(BAD)
    for name, (_, word) in BAD.items():
        assert word in reasons[name], (name, reasons[name])
    assert_no_server_path(answer.get_data(as_text=True), settings)
    assert again.get_json() == body
    # one log line per bad version, however often it is listed
    for name in BAD:
        assert sum(f"skipped model version {name}:" in r.getMessage() for r in caplog.records) == 1, name


def test_all_versions_and_the_admin_page_skip_them_too(listed):
    client, settings = listed
    answer = client.get("/versions")
    assert answer.status_code == 200, answer.get_data(as_text=True)[:500]
    assert_no_server_path(json.dumps(answer.get_json()["skipped"]), settings)
    assert GOOD in answer.get_json()["versions"] and not set(BAD) & set(answer.get_json()["versions"])
    assert {s["version"] for s in answer.get_json()["skipped"]} == set(BAD)

    page = client.get(f"/?project={PROJECT}")
    assert page.status_code == 200, page.get_data(as_text=True)[:2000]
    text = page.get_data(as_text=True)
    assert f'data-version="{GOOD}"' in text
    skipped = text[text.index('id="skipped-versions"'):]
    for name in BAD:
        assert f'data-version="{name}"' not in text and name in skipped


@pytest.mark.parametrize("name", sorted(BAD))
def test_promotion_refuses_a_bad_version(listed, redis_client, name):
    client, settings = listed
    answer = client.post(f"/projects/{PROJECT}/versions/{name}/promote")
    assert answer.status_code == 409, answer.get_json()
    assert name in answer.get_json()["error"] and BAD[name][1] in answer.get_json()["error"]
    assert f"{name}/{META_FILE}" in answer.get_json()["error"]
    assert_no_server_path(answer.get_json()["error"], settings)
    assert redis_client.get(keys.current_version(PROJECT)) is None


def test_hot_swap_refuses_a_bad_version(redis_client, listed, caplog):
    swap = HotSwap(listed[1], redis_client, ModelCache(listed[1].max_image_pixels))
    with caplog.at_level(logging.ERROR, logger="backend.serving.hotswap"):
        assert swap.swap_to(str(PROJECT), "v0003-metrics-text") is False
    assert "refused model version v0003-metrics-text" in caplog.text and "'metrics'" in caplog.text
    assert swap.swap_to(str(PROJECT), GOOD) is True


def test_hot_swap_retries_a_refused_version_once_it_is_repaired(settings, redis_client, caplog):
    folder = project_versions_dir(settings, str(PROJECT))
    write_small_version(folder / "v0001-first", seed=1)
    write_small_version(folder / "v0002-second", seed=2)
    swap = HotSwap(settings, redis_client, ModelCache(settings.max_image_pixels))
    assert swap.swap_to(str(PROJECT), "v0001-first") is True
    weights = folder / "v0002-second" / WEIGHTS_FILE
    flip_a_byte(weights)
    with caplog.at_level(logging.ERROR, logger="backend.serving.hotswap"):
        assert swap.swap_to(str(PROJECT), "v0002-second") is False
        assert swap.swap_to(str(PROJECT), "v0002-second") is False  # unchanged files: not loaded again
    assert caplog.text.count("refused model version v0002-second") == 1
    flip_a_byte(weights)  # repaired
    assert swap.swap_to(str(PROJECT), "v0002-second") is True
    assert swap.get(str(PROJECT)).version == "v0002-second"
