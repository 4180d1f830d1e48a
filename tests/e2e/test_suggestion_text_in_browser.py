"""The model's suggestion on a real Label Studio 1.23.2 labelling screen, in headless Chromium at
1366x768, in a project set up as `aesemo stack` sets its demo project (INDEPENDENT_VOTES:
predictions not shown to annotators) with the shipped label config. The refresh job writes each
task's prediction and its text; then an annotator labels from the labelling stream with the keys
the instructions teach:

- nothing is pre-selected, and the suggestion is a line of text naming the model version and each
  class with its confidence, as Label Studio's prediction holds them;
- pressing the suggested classes' own keys, then Ctrl+Enter, submits them: no "required" warning
  (a pre-selected choice would be un-selected by its key);
- a control task gets an empty prediction that keeps its score, no text, and is labelled the same way.

Key presses per photo are printed, with and without a suggestion. Screenshots go to
$AESEMO_TEST_ARTIFACTS when it is set, else to tmp_path.
"""
from __future__ import annotations

import re
import uuid

import pytest

from backend.labelstudio.label_config import SUGGESTION_FIELD, parse_label_config
from backend.serving.suggestion_text import suggestion_text
from backend.tools.demo_project import INDEPENDENT_VOTES
from backend_proc import LABEL_CONFIG, BackendProcess, backend_env, run_worker
from browser import artifacts_dir, chromium_page, open_labelling_stream
from ls_server import LabelStudioServer
from net import free_port, wait_for
from suggestion_screen import (HOTKEYS, Keyboard, checked_choices, close_instructions, next_task_loaded,
                               one_task_of_each_kind, shown_text)

pytestmark = pytest.mark.torch

FRACTION = 0.5          # half the tasks are control tasks: a few imports give one of each kind
TEXT = re.compile(r"^model \S+ suggests: (\w+) \d{1,3} %, (\w+) \d{1,3} %$")
OWN_ANSWER = ("low", "anger")   # what the annotator chooses where there is no suggestion


@pytest.fixture(scope="module")
def project(label_studio: LabelStudioServer, tmp_path_factory):
    root = tmp_path_factory.mktemp("aesemo-suggestion-text")
    # the untrained base version suggests (AESEMO_SUGGEST_UNTRAINED, backend_env) and both task types
    env = backend_env(root / "data", label_studio.url, LABEL_STUDIO_API_KEY=label_studio.token,
                      AESEMO_CONTROL_FRACTION=str(FRACTION))
    backend = BackendProcess("suggestion-text", root / "data", free_port(), env)
    backend.start()
    try:
        pid = label_studio.create_project("aesemo e2e: suggestion text", LABEL_CONFIG, **INDEPENDENT_VOTES)["id"]
        tasks = one_task_of_each_kind(label_studio, pid, FRACTION)
        label_studio.connect_ml_backend(pid, backend.url)     # /setup queues a refresh of the project
        run_worker(backend, root)
        email, password = f"text-{uuid.uuid4().hex[:8]}@example.com", f"pw-{uuid.uuid4().hex}"
        label_studio.signup_user(email, password)
        yield {"ls": label_studio, "backend": backend, "pid": pid, "email": email, "password": password, **tasks}
    finally:
        backend.stop()


def test_label_studio_holds_the_text_beside_its_prediction_and_nothing_on_a_control_task(project):
    ls = project["ls"]
    [suggested] = ls.predictions(project["suggested"])
    assert [r["from_name"] for r in suggested["result"]] == ["aesthetic", "emotion"], suggested
    text = ls.task(project["suggested"])["data"][SUGGESTION_FIELD]
    assert text == suggestion_text(parse_label_config(LABEL_CONFIG), suggested) and TEXT.match(text), text
    [control] = ls.predictions(project["control"])
    assert control["result"] == [] and 0 <= control["score"] <= 1, control
    assert SUGGESTION_FIELD not in ls.task(project["control"])["data"]
    assert ls.project(project["pid"])["show_collab_predictions"] is False


def label_one_task(page, project) -> tuple[int, int]:
    """The open task labelled with the keys the instructions teach (the suggested classes' keys
    where there is a suggestion, the annotator's own answer where not), then Ctrl+Enter; returns
    the task and the key presses it took."""
    ls = project["ls"]
    text = shown_text(page)
    task = project["suggested"] if text is not None else project["control"]
    assert checked_choices(page) == 0, "a choice is pre-selected"
    shots = "suggested-task" if text is not None else "control-task"
    page.screenshot(path=str(page.artifacts / f"{shots}.png"))
    if text is not None:
        assert TEXT.match(text) and text == ls.task(task)["data"][SUGGESTION_FIELD], text
        answer = TEXT.match(text).groups()
    else:
        answer = OWN_ANSWER
    keys = Keyboard(page)
    keys.press(*(HOTKEYS[value] for value in answer))
    assert checked_choices(page) == 2, "a choice's key did not select it"
    page.screenshot(path=str(page.artifacts / f"{shots}-chosen.png"))
    keys.press("Control+Enter")
    [annotation] = wait_for(lambda: ls.annotations(task), 60, interval=0.5, what=f"task {task}'s annotation")
    assert "is required" not in page.inner_text("body"), f"a 'required' warning on task {task}"
    chosen = {r["from_name"]: r["value"]["choices"] for r in annotation["result"]}
    assert chosen == {"aesthetic": [answer[0]], "emotion": [answer[1]]}, annotation
    assert annotation["parent_prediction"] is None, annotation     # nothing was pre-filled from a prediction
    return task, keys.presses


def test_the_suggestion_reads_as_text_and_the_natural_keys_submit_it(project, tmp_path):
    with chromium_page(artifacts_dir(tmp_path)) as page:
        image = open_labelling_stream(page, project["ls"], project["pid"], project["email"], project["password"])
        session = Keyboard(page)
        close_instructions(page, session)
        first_image = image.get_attribute("src")
        first, first_presses = label_one_task(page, project)
        next_task_loaded(page, first_image)
        second, second_presses = label_one_task(page, project)
    assert {first, second} == {project["suggested"], project["control"]}
    presses = {first: first_presses, second: second_presses}
    print(f"\nkey presses per photo: with a suggestion {presses[project['suggested']]}, without (control task) "
          f"{presses[project['control']]}; once per session: {session.presses} (closing the instructions)")
    assert presses[project["suggested"]] == presses[project["control"]] == 3
