"""What suggestions do to the labels, end to end: a real Label Studio 1.23.2, the real backend
(`aesemo serve`) and worker, and three annotators labelling in headless Chromium at 1366x768 with
the keys the instructions teach, in a project set up as `aesemo stack` sets its demo project
(predictions not shown to annotators, the shipped label config), the evidence gate on and half
the tasks control tasks.

The project's current version (promoted by hand) has held-out evidence that clears the gate for
the aesthetic type and not for the emotion (8 tasks, 6 of them one class). So:

- the labelling screen shows the model's aesthetic suggestion with its confidence and no emotion
  suggestion; a control task shows none; nothing is pre-selected, and the natural keys then
  Ctrl+Enter submit without a "required" warning;
- the admin page says the emotion is withheld and why, with the numbers;
- one annotator keeps the suggestion, two judge the photo otherwise: the admin page's anchoring
  figures after the three annotators' votes give each one's share of suggestions accepted
  unchanged, and the kept suggestion, submitted faster than the policy's rubber_stamp_seconds
  (set to 60 s here: a browser presses keys faster than any person), is set aside, so the
  suggested task's aesthetic stays open instead of counting it as a third independent vote.

Screenshots go to $AESEMO_TEST_ARTIFACTS when it is set, else to tmp_path.
"""
from __future__ import annotations

import re
import uuid
from types import SimpleNamespace

import pytest

from backend.labelstudio.label_config import SUGGESTION_FIELD
from backend.serving.registry import project_versions_dir
from backend.tools.demo_project import INDEPENDENT_VOTES
from backend_proc import LABEL_CONFIG, BackendProcess, backend_env, run_worker
from browser import artifacts_dir, chromium_page, open_labelling_stream
from ls_server import LabelStudioServer
from net import free_port, wait_for
from suggestion_screen import (HOTKEYS, Keyboard, checked_choices, close_instructions, next_task_loaded,
                               one_task_of_each_kind, shown_text)
from training_project import write_small_version

pytestmark = pytest.mark.torch

FRACTION = 0.5
VERSION = "v0001-gated"
STRONG = [[18, 2], [1, 19]]     # aesthetic: 37 of 40 held-out tasks right, the classes even: suggested
THIN = [[6 if i == j == 0 else 2 if i == j == 1 else 0 for j in range(8)] for i in range(8)]  # 8 of 8, 6 one class
AESTHETIC_ONLY = re.compile(rf"^model {VERSION} suggests: (high|low) \d{{1,3}} %$")
EMOTION = "anger"               # every annotator's emotion: none is suggested
OTHER = {"high": "low", "low": "high"}
CONTROL_AESTHETIC = "low"


@pytest.fixture(scope="module")
def project(label_studio: LabelStudioServer, tmp_path_factory):
    root = tmp_path_factory.mktemp("aesemo-suggestions-pull")
    env = backend_env(root / "data", label_studio.url, LABEL_STUDIO_API_KEY=label_studio.token,
                      AESEMO_CONTROL_FRACTION=str(FRACTION), AESEMO_SUGGESTION_GATE="1",
                      AESEMO_RUBBER_STAMP_SECONDS="60")
    backend = BackendProcess("suggestions-pull", root / "data", free_port(), env)
    backend.start()
    try:
        pid = label_studio.create_project("aesemo e2e: the suggestions' pull", LABEL_CONFIG, **INDEPENDENT_VOTES)["id"]
        tasks = one_task_of_each_kind(label_studio, pid, FRACTION)
        label_studio.update_project(pid, maximum_annotations=3, overlap_cohort_percentage=100)
        label_studio.connect_ml_backend(pid, backend.url)
        write_small_version(project_versions_dir(SimpleNamespace(data_dir=root / "data"), str(pid)) / VERSION, seed=5,
                            metrics={"aesthetic": {"accuracy": 0.925, "confusion": STRONG},
                                     "emotion": {"accuracy": 1.0, "confusion": THIN}})
        promoted = backend.post(f"/projects/{pid}/versions/{VERSION}/promote")
        assert promoted.status_code == 200, promoted.text
        run_worker(backend, root)           # the refreshes /setup and the promotion queued
        annotators = []
        for name in ("keeps", "judges-1", "judges-2"):
            email, password = f"{name}-{uuid.uuid4().hex[:8]}@example.com", f"pw-{uuid.uuid4().hex}"
            label_studio.signup_user(email, password)
            annotators.append({"name": name, "email": email, "password": password})
        ids = {u["email"]: u["id"] for u in label_studio.users()}
        for annotator in annotators:
            annotator["id"] = ids[annotator["email"]]
        yield {"ls": label_studio, "backend": backend, "pid": pid, "annotators": annotators, **tasks}
    finally:
        backend.stop()


def test_only_the_type_with_evidence_is_suggested_and_the_admin_page_says_why(project):
    ls, backend, pid = project["ls"], project["backend"], project["pid"]
    [suggested] = ls.predictions(project["suggested"])
    assert suggested["model_version"] == VERSION and [r["from_name"] for r in suggested["result"]] == ["aesthetic"]
    assert AESTHETIC_ONLY.match(ls.task(project["suggested"])["data"][SUGGESTION_FIELD])
    [control] = ls.predictions(project["control"])
    assert control["result"] == [] and SUGGESTION_FIELD not in ls.task(project["control"])["data"]
    listed = backend.get(f"/projects/{pid}/versions").json()["versions"]
    withheld = next(v for v in listed if v["version"] == VERSION)["withheld_types"]
    assert set(withheld) == {"emotion"} and "on 8 tasks" in withheld["emotion"], withheld


def label_stream(page, project, annotator: dict) -> dict[int, int]:
    """The annotator's two tasks labelled from the stream: the suggested aesthetic class kept by
    "keeps", the other one chosen by the others, the same own answer on the control task; task ->
    key presses."""
    keys = Keyboard(page)
    close_instructions(page, keys)
    presses = {}
    for n in range(2):
        image = page.locator("img[src^='blob:']").first.get_attribute("src")
        text = shown_text(page)
        assert checked_choices(page) == 0, "a choice is pre-selected"
        if text is None:
            task, aesthetic = project["control"], CONTROL_AESTHETIC
        else:
            task, shown = project["suggested"], AESTHETIC_ONLY.match(text)
            assert shown, f"not the aesthetic suggestion alone: {text!r}"
            aesthetic = shown.group(1) if annotator["name"] == "keeps" else OTHER[shown.group(1)]
        page.screenshot(path=str(page.artifacts / f"{annotator['name']}-task-{n + 1}.png"))
        before = keys.presses
        keys.press(HOTKEYS[aesthetic], HOTKEYS[EMOTION])
        assert checked_choices(page) == 2, "a choice's key did not select it"
        keys.press("Control+Enter")
        wait_for(lambda task=task: [a for a in project["ls"].annotations(task) if a["completed_by"] == annotator["id"]],
                 60, interval=0.5, what=f"{annotator['name']}'s annotation of task {task}")
        assert "is required" not in page.inner_text("body"), f"a 'required' warning on task {task}"
        presses[task] = keys.presses - before
        if n == 0:
            next_task_loaded(page, image)
    return presses


def anchoring_rows(page) -> dict[str, list[str]]:
    """The aesthetic anchoring table of the admin page: Label Studio user id -> its cells."""
    rows = page.locator("#anchoring-aesthetic tbody tr")
    return {rows.nth(i).get_attribute("data-annotator"): rows.nth(i).locator("td").all_inner_texts()
            for i in range(rows.count())}


def test_three_annotators_label_and_the_admin_page_measures_the_pull(project, tmp_path):
    ls, backend, pid = project["ls"], project["backend"], project["pid"]
    artifacts = artifacts_dir(tmp_path)
    for annotator in project["annotators"]:
        with chromium_page(artifacts) as page:
            open_labelling_stream(page, ls, pid, annotator["email"], annotator["password"])
            presses = label_stream(page, project, annotator)
        assert set(presses) == {project["suggested"], project["control"]}
        assert set(presses.values()) == {3}, presses      # two choices and Ctrl+Enter, suggestion or not

    def summary():
        return backend.get(f"/projects/{pid}/consensus").json()
    wait_for(lambda: summary()["emotion"]["tasks"]["agreed"] == 2, 60, interval=0.5, what="the six votes counted")
    # the kept suggestion is set aside: two independent votes on the suggested task, one short of agreement
    tasks = summary()["aesthetic"]["tasks"]
    assert (tasks["agreed"], tasks["waiting"]) == (1, 1), tasks
    figures = summary()["anchoring"]["aesthetic"]["annotators"]
    keeps, *judges = (str(a["id"]) for a in project["annotators"])
    assert figures[keeps]["accepted"] == {"n": 1, "share": 1.0}, figures
    assert all(figures[j]["accepted"] == {"n": 1, "share": 0.0} for j in judges), figures
    assert all(figures[a]["control_agreement"] == {"n": 1, "share": 1.0} for a in figures), figures

    with chromium_page(artifacts) as page:
        page.goto(f"{backend.url}/?project={pid}")
        page.locator("#anchoring-aesthetic").wait_for(state="visible")
        rows = anchoring_rows(page)
        page.locator("#anchoring-aesthetic").scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / "admin-anchoring.png"), full_page=True)
        body = page.inner_text("body")
    assert rows.keys() == {str(a["id"]) for a in project["annotators"]}, rows
    accepted_column = 3                  # annotator, agreement control, agreement suggested, accepted unchanged
    assert rows[keeps][accepted_column].startswith("100 %"), rows
    assert all(rows[j][accepted_column].startswith("0 %") for j in judges), rows
    assert "emotion" in body and "does not lie above 0" in body
