"""The labelling screen of a project whose suggestions are a line of text (the shipped label
config, predictions not shown to annotators), in headless Chromium: key presses counted, the
suggestion line, the choices selected, the stream's next task; and a project holding one
suggested and one control task. Shared by the e2e tests that label through the UI."""
from __future__ import annotations

import re

from backend.tools.demo_project import sample_photos
from backend.votes.control import is_control_task
from backend_proc import LABEL_CONFIG
from ls_server import LabelStudioServer

HOTKEYS = dict(re.findall(r'<Choice value="([^"]+)" hotkey="([^"]+)"', LABEL_CONFIG))
MAX_IMPORTS = 40        # each import is a control task with probability `fraction`


def one_task_of_each_kind(ls: LabelStudioServer, pid: int, fraction: float) -> dict[str, int]:
    """The stack's sample photos imported one by one until the project holds a suggested and a
    control task (`fraction` of the tasks are), then the others deleted: {"suggested": id,
    "control": id}. Nothing is deleted before the last import: Label Studio's sqlite database
    gives the next task the id of a deleted newest one, which would be the same kind again."""
    kinds: dict[str, int] = {}
    photos = sample_photos()
    for n in range(MAX_IMPORTS):
        ls.import_files(pid, [photos[n % len(photos)]])
        newest = max(t["id"] for t in ls.tasks(pid))
        kinds.setdefault("control" if is_control_task(newest, fraction) else "suggested", newest)
        if len(kinds) == 2:
            for task in ls.tasks(pid):
                if task["id"] not in kinds.values():
                    ls.api("DELETE", f"/api/tasks/{task['id']}")
            return kinds
    raise AssertionError(f"{MAX_IMPORTS} imports gave only {kinds}")


class Keyboard:
    """The page's keyboard, counting the key presses."""

    def __init__(self, page):
        self.page, self.presses = page, 0

    def press(self, *keys: str) -> None:
        for key in keys:
            self.page.keyboard.press(key)
            self.presses += 1


def close_instructions(page, keys: Keyboard) -> None:
    """The project's instructions open over the first task of the stream (show_instruction),
    covering the photo: read, then closed with Escape."""
    title = page.get_by_text("Labeling Instructions", exact=True)
    title.wait_for(state="visible")
    page.screenshot(path=str(page.artifacts / "suggestion-instructions.png"))
    keys.press("Escape")
    title.wait_for(state="hidden")


def shown_text(page) -> str | None:
    """The suggestion line above the choices, when the task shows one."""
    found = page.get_by_text(re.compile(r"^model \S+ suggests: ")).all_inner_texts()
    return found[0] if found else None


def checked_choices(page) -> int:
    return page.locator("input[type=checkbox]:checked").count()


def next_task_loaded(page, previous_image: str) -> None:
    """The stream's next task: a new photo, loaded, with no choice selected."""
    page.wait_for_function(
        """previous => { const img = document.querySelector("img[src^='blob:']");
                         return img && img.src !== previous && img.complete && img.naturalWidth > 0
                                && !document.querySelector("input[type=checkbox]:checked"); }""",
        arg=previous_image)
