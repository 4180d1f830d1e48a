"""Headless Chromium (Debian's, driven by Playwright): the one launch the browser tests share.
Importing it skips the importing test module when Debian's Chromium is missing (fails it under CI:
scripts/setup.sh installs it as root); Playwright is a test dependency, so its absence is an error."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")

if not CHROMIUM.is_file():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium as root", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (Debian package chromium; scripts/setup.sh installs it as root)",
                allow_module_level=True)

from playwright import sync_api


def artifacts_dir(tmp_path: Path) -> Path:
    """$AESEMO_TEST_ARTIFACTS when set (screenshots to look at), else the test's tmp_path."""
    return Path(os.environ.get("AESEMO_TEST_ARTIFACTS") or tmp_path)


@contextmanager
def chromium_page(artifacts: Path, **context_options):
    """A page in a fresh browser context (`context_options`: Playwright's new_context arguments);
    `page.artifacts` is where its screenshots go."""
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            # no sandbox: tests may run as root; only the tests' servers on 127.0.0.1 load
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        context = browser.new_context(**context_options)
        page = context.new_page()
        page.artifacts = artifacts
        try:
            yield page
        finally:
            context.close()
            browser.close()
