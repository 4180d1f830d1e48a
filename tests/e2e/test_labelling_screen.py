"""The labelling screen in a real browser: headless Chromium (Debian's, driven by Playwright) logs in
to a real Label Studio 1.23.2 as an annotator at 1366x768, opens the labelling stream of a project
with the shipped label config, and finds one screen per task: the image scaled to fit, the choices
beside it, the Submit button in view, nothing to scroll. It labels the task with the keyboard only
(the config's hotkeys, then Ctrl+Enter) and the vote reaches the backend through Label Studio's
webhook, with the annotator's name from Label Studio's users API.

Screenshots go to $AESEMO_TEST_ARTIFACTS when it is set (to look at them), else to tmp_path.
"""
from __future__ import annotations

import io
import re
import uuid

import pytest
from PIL import Image

from backend_proc import LABEL_CONFIG, BackendProcess, backend_env
from browser import SCREEN, artifacts_dir, choice, chromium_page, open_labelling_stream
from ls_server import LabelStudioServer
from net import free_port, wait_for

NARROW = {"width": 640, "height": 1000}  # a tablet upright: too narrow for both side by side
PHOTO_SIZE = (1600, 1200)  # larger than the screen: Label Studio must scale it down


def large_photo() -> bytes:
    """A gradient bigger than the screen (a flat colour would hide how it is scaled)."""
    image = Image.merge("RGB", [Image.linear_gradient("L"), Image.radial_gradient("L"),
                                Image.linear_gradient("L").rotate(90)]).resize(PHOTO_SIZE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def project(label_studio: LabelStudioServer, tmp_path_factory):
    """A project with the shipped config and one large photo, the backend connected (suggestions
    off, as by default: a suggestion would preselect the choices), and an annotator's login."""
    root = tmp_path_factory.mktemp("aesemo-screen")
    env = backend_env(root / "data", label_studio.url, LABEL_STUDIO_API_KEY=label_studio.token, AESEMO_SUGGEST_UNTRAINED="0")
    backend = BackendProcess("screen", root / "data", free_port(), env)
    backend.start()
    try:
        pid = label_studio.create_project("aesemo e2e: labelling screen", LABEL_CONFIG)["id"]
        # uploaded, as the stack's photos are: the browser loads it from Label Studio itself
        photo = root / "large-photo.png"
        photo.write_bytes(large_photo())
        label_studio.import_files(pid, [photo])
        (task,) = label_studio.tasks(pid)
        label_studio.connect_ml_backend(pid, backend.url, title="aesemo")
        email, password = f"screen-{uuid.uuid4().hex[:8]}@example.com", f"pw-{uuid.uuid4().hex}"
        label_studio.signup_user(email, password)
        yield {"ls": label_studio, "backend": backend, "pid": pid, "task": task["id"], "email": email,
               "password": password}
    finally:
        backend.stop()


@pytest.fixture
def page(project, tmp_path):
    with chromium_page(artifacts_dir(tmp_path)) as page:
        yield page


def box(page, locator) -> dict:
    found = locator.bounding_box()
    assert found is not None, f"{locator} is not rendered"
    return found


def assert_one_screen(page, image) -> None:
    """The photo, the first and last choices and Submit inside the viewport, the choices right of
    the photo, the photo scaled down, and nothing that scrolls."""
    photo, high, sadness = box(page, image), box(page, choice(page, "high")), box(page, choice(page, "sadness"))
    submit = box(page, page.get_by_test_id("bottombar-submit-button"))
    for name, b in (("image", photo), ("high", high), ("sadness", sadness), ("Submit", submit)):
        assert b["y"] >= 0 and b["y"] + b["height"] <= SCREEN["height"], (name, b)
        assert b["x"] >= 0 and b["x"] + b["width"] <= SCREEN["width"], (name, b)
    assert photo["width"] < PHOTO_SIZE[0] and photo["height"] < PHOTO_SIZE[1], photo
    assert min(high["x"], sadness["x"]) >= photo["x"] + photo["width"], (photo, high, sadness)
    assert page.evaluate("document.scrollingElement.scrollHeight") <= SCREEN["height"]
    scrolling = page.evaluate("""() => [...document.querySelectorAll('*')].filter(e =>
        e.scrollHeight > e.clientHeight + 1 && ['auto', 'scroll'].includes(getComputedStyle(e).overflowY)
        && e.clientHeight > 0 && e.querySelector('img, input')).map(e => e.className)""")
    assert scrolling == [], scrolling


def assert_hotkeys_shown(page) -> None:
    """Every choice of the config has a hotkey, shown beside its value."""
    pairs = re.findall(r'<Choice value="([^"]+)" hotkey="([^"]+)"', LABEL_CONFIG)
    assert len(pairs) == LABEL_CONFIG.count("<Choice ") == 10, pairs
    for value, hotkey in pairs:
        shown = choice(page, value).inner_text()
        assert re.sub(r"\W", "", shown) == value + hotkey, (value, shown)


def assert_wraps_when_narrow(page, image) -> None:
    page.set_viewport_size(NARROW)
    page.wait_for_function(f"() => innerWidth === {NARROW['width']}")

    def wrapped():
        # Label Studio rescales the photo after the resize event: wait for the layout to settle
        photo, high = box(page, image), box(page, choice(page, "high"))
        return high["y"] >= photo["y"] + photo["height"] and (photo, high)
    wait_for(wrapped, 20, interval=0.25, what="the choices to wrap below the photo at 640 px")
    page.screenshot(path=str(page.artifacts / "labelling-narrow.png"), full_page=True)
    page.set_viewport_size(SCREEN)


def test_one_screen_per_task_labelled_with_hotkeys_only(page, project):
    backend, pid = project["backend"], project["pid"]
    image = open_labelling_stream(page, project["ls"], pid, project["email"], project["password"])
    page.screenshot(path=str(page.artifacts / "labelling-1366x768.png"))
    assert_one_screen(page, image)
    assert_hotkeys_shown(page)
    assert_wraps_when_narrow(page, image)

    # the keyboard only: q = high, 3 = contentment, Ctrl+Enter submits
    page.keyboard.press("q")
    page.keyboard.press("3")
    page.screenshot(path=str(page.artifacts / "labelling-1366x768-chosen.png"))
    page.keyboard.press("Control+Enter")

    def the_vote():
        body = backend.get(f"/projects/{pid}/consensus/tasks", params={"state": "waiting"}).json()
        return next((t for t in body.get("tasks", []) if t["task"] == project["task"]), None)
    task = wait_for(the_vote, 60, interval=0.5, what="the hotkey vote to reach the backend")
    (user,) = task["annotators"]
    assert task["aesthetic"]["votes"] == {user: "high"} and task["emotion"]["votes"] == {user: "contentment"}, task
    assert task["annotators"][user] == project["email"], task
