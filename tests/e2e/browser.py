"""Headless Chromium (tests/chromium.py) on a real Label Studio: the screen size, the login and the
labelling stream, shared by the e2e tests that label through the UI. Importing it skips the
importing test module when Chromium or Playwright is missing (fails it under CI)."""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import chromium
from chromium import artifacts_dir, sync_api  # noqa: F401 (the e2e tests import artifacts_dir from here)
from ls_server import LabelStudioServer

SCREEN = {"width": 1366, "height": 768}


@contextmanager
def chromium_page(artifacts: Path):
    """A page at SCREEN size; `page.artifacts` is where its screenshots go."""
    with chromium.chromium_page(artifacts, viewport=SCREEN) as page:
        page.set_default_timeout(60_000)  # Label Studio's bundle is large; 2 busy cores
        yield page


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
