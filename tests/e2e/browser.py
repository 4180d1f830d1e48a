"""Headless Chromium (Debian's, driven by Playwright) on a real Label Studio: the launch, the login
and the labelling stream, shared by the e2e tests that label through the UI. Importing it skips the
importing test module when Chromium or Playwright is missing (fails it under CI)."""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

import pytest

from ls_server import LabelStudioServer

CHROMIUM = Path("/usr/bin/chromium")
SCREEN = {"width": 1366, "height": 768}

if not CHROMIUM.is_file():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium as root", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (Debian package chromium; scripts/setup.sh installs it as root)",
                allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@contextmanager
def chromium_page(artifacts: Path):
    """A page at SCREEN size; `page.artifacts` is where its screenshots go."""
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            # no sandbox: tests may run as root; only Label Studio and the image server on 127.0.0.1 load
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        context = browser.new_context(viewport=SCREEN)
        page = context.new_page()
        page.set_default_timeout(60_000)  # Label Studio's bundle is large; 2 busy cores
        page.artifacts = artifacts
        try:
            yield page
        finally:
            context.close()
            browser.close()


def artifacts_dir(tmp_path: Path) -> Path:
    """$AESEMO_TEST_ARTIFACTS when set (screenshots to look at), else the test's tmp_path."""
    return Path(os.environ.get("AESEMO_TEST_ARTIFACTS") or tmp_path)


def log_in(page, ls: LabelStudioServer, email: str, password: str) -> None:
    page.goto(f"{ls.url}/user/login/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.press("input[name=password]", "Enter")
    page.wait_for_url(lambda url: "/user/login" not in url)


def choice(page, value: str):
    """A choice's label: its text is the value and the hotkey ("sadness" and a superscript "8")."""
    return page.locator("label", has_text=re.compile(f"^{value}")).first


def open_labelling_stream(page, ls: LabelStudioServer, pid: int, email: str, password: str):
    """The annotator's labelling stream ("Label All Tasks"), once the photo has loaded; the image."""
    log_in(page, ls, email, password)
    page.goto(f"{ls.url}/projects/{pid}/data?labeling=1")
    try:
        choice(page, "sadness").wait_for(state="visible")
    except sync_api.TimeoutError:
        page.screenshot(path=str(page.artifacts / "labelling-timeout.png"))
        raise AssertionError(f"no labelling screen at {page.url}: see labelling-timeout.png") from None
    # Label Studio fetches the photo and shows it from a blob: URL
    image = page.locator("img[src^='blob:']").first
    image.wait_for(state="visible")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    return image
