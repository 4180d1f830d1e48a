"""End-to-end tests against a real Label Studio 1.23.2 (see ls_server.py beside this file).

Everything under tests/e2e is marked ``e2e``: deselect with ``-m "not e2e"``, or set
AESEMO_SKIP_E2E=1 to skip the tests that need the server. The first run installs Label Studio
into .venv-ls (about a minute, needs the package registry) and migrates a fresh database
(25-100 s); later runs start in 5-15 s from a database template kept in .venv-ls.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parent
if str(E2E_DIR) not in sys.path:  # pytest's default import mode adds it too; be explicit
    sys.path.insert(0, str(E2E_DIR))

from ls_server import LabelStudioServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end-to-end test that starts a real Label Studio 1.23.2 server (slow)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory):
    """One Label Studio server for the whole test session (admin token: ``label_studio.token``)."""
    if os.environ.get("AESEMO_SKIP_E2E", "") not in ("", "0"):
        pytest.skip("AESEMO_SKIP_E2E is set")
    server = LabelStudioServer(tmp_path_factory.mktemp("label-studio"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def image_server():
    """A small HTTP server on 127.0.0.1 serving the test's generated images."""
    from images_server import ImageServer
    with ImageServer() as server:
        yield server
