"""The active-learning loop in one test, against a real Label Studio 1.23.2: an annotator labels tasks in
the browser (headless Chromium, the config's hotkeys only, Ctrl+Enter), another the rest through
the API (each task in the UI costs seconds on a loaded 2-core machine); Label Studio's Start Training
queues a job; a burst worker trains resnet18 (small images, one epoch), the version is promoted,
and the refresh job the promotion queued writes the new version's predictions into Label Studio;
the "Least certain first" tab (Label Studio's own tasks API ordered by prediction score ascending)
then lists the task whose NEW prediction is least certain first, and the label stream follows it.
"""
from __future__ import annotations

import json
import re
import uuid

import pytest

from annotating import Annotator, wait_until
from backend_proc import LABEL_CONFIG, BackendProcess, backend_env, make_pngs, run_worker
from browser import artifacts_dir, chromium_page, open_labelling_stream
from ls_server import LabelStudioServer
from net import free_port, wait_for
from test_full_loop import TRAIN_ENV
from test_least_certain_first import COLOURS, sorts_by, tabs, tasks_in_tab

pytestmark = pytest.mark.torch

N_LABELLED = 12  # 2 aesthetic x 6 emotion classes of model.synthetic
# the others through the API (each task in the browser costs seconds on 2 busy cores); fewer than
# AESEMO_MIN_TRAINING_LABELS (5), so a Start Training after them is refused
N_IN_BROWSER = 3
HOTKEYS = dict(re.findall(r'<Choice value="([^"]+)" hotkey="([^"]+)"', LABEL_CONFIG))


@pytest.fixture
def loop(label_studio: LabelStudioServer, tmp_path):
    """The backend (one vote agrees a task; suggestions off, so no choice is preselected in the
    browser) connected to a project of labelled-to-be synthetic images and unlabelled photos."""
    from model.synthetic import write_synthetic_set
    env = backend_env(tmp_path / "data", label_studio.url, LABEL_STUDIO_API_KEY=label_studio.token,
                      AESEMO_CONSENSUS_MIN_ANNOTATORS="1", AESEMO_SUGGEST_UNTRAINED="0", **TRAIN_ENV)
    backend = BackendProcess("loop", tmp_path / "data", free_port(), env)
    backend.start()
    try:
        pid = label_studio.create_project("aesemo e2e: active-learning loop", LABEL_CONFIG)["id"]
        manifest = write_synthetic_set(tmp_path / "synthetic", N_LABELLED, seed=7, size=64)
        truth = {}
        for line in manifest.read_text().splitlines()[1:]:
            row = json.loads(line)
            truth[row["image"]] = (row["aesthetic"], row["emotion"])
        label_studio.import_files(pid, [manifest.parent / name for name in truth])
        label_studio.import_files(pid, make_pngs(tmp_path / "photos", COLOURS, prefix="unlabelled"))
        ml = label_studio.connect_ml_backend(pid, backend.url, title="aesemo")
        yield {"ls": label_studio, "backend": backend, "pid": pid, "ml": ml["id"], "truth": truth,
               "root": tmp_path}
    except BaseException:
        print(backend.log_tail(80))
        raise
    finally:
        backend.stop()


def truth_of(task: dict, truth: dict) -> tuple[str, str] | None:
    """The synthetic labels of a task (Label Studio prefixes an uploaded file's name)."""
    return next((labels for name, labels in truth.items() if task["data"]["image"].endswith(name)), None)


def agreed_vote(loop: dict, task_id: int) -> dict | None:
    body = loop["backend"].get(f"/projects/{loop['pid']}/consensus/tasks", params={"state": "agreed"}).json()
    return next((t for t in body.get("tasks", []) if t["task"] == task_id), None)


def label_in_the_browser(loop: dict, artifacts) -> list[int]:
    """An annotator's first N_IN_BROWSER tasks of the labelling stream, labelled with the hotkeys
    only (Label Studio's default sampling is sequential: the lowest ids, in order); their ids."""
    ls, pid = loop["ls"], loop["pid"]
    email, password = f"loop-{uuid.uuid4().hex[:8]}@example.com", f"pw-{uuid.uuid4().hex}"
    ls.signup_user(email, password)
    loop["annotator"] = email
    tasks = sorted(ls.tasks(pid), key=lambda t: t["id"])[:N_IN_BROWSER]
    with chromium_page(artifacts) as page:
        image = open_labelling_stream(page, ls, pid, email, password)
        for n, task in enumerate(tasks):
            shown = image.get_attribute("src")
            aesthetic, emotion = truth_of(task, loop["truth"])
            page.keyboard.press(HOTKEYS[aesthetic])
            page.keyboard.press(HOTKEYS[emotion])
            page.screenshot(path=str(page.artifacts / f"loop-labelled-with-hotkeys-{n}.png"))
            page.keyboard.press("Control+Enter")
            vote = wait_for(lambda task=task: agreed_vote(loop, task["id"]), 90, interval=0.5,
                            what=f"the hotkey vote on task {task['id']} to reach the backend")
            assert (vote["aesthetic"]["label"], vote["emotion"]["label"]) == (aesthetic, emotion), vote
            if n + 1 < len(tasks):  # the stream moves on to the next task's photo
                page.wait_for_function("shown => { const img = document.querySelector(\"img[src^='blob:']\");"
                                       " return img && img.src !== shown && img.complete && img.naturalWidth > 0; }",
                                       arg=shown)
    return [t["id"] for t in tasks]


def label_the_rest_through_the_api(loop: dict, done: list[int]) -> list[int]:
    ls, pid = loop["ls"], loop["pid"]
    annotator = Annotator(ls, "loop-api")
    unlabelled = []
    for task in ls.tasks(pid):
        labels = truth_of(task, loop["truth"])
        if labels is None:
            unlabelled.append(task["id"])
        elif task["id"] not in done:
            annotator.annotate(task["id"], *labels)
    return unlabelled


def start_training(loop: dict, status: str) -> None:
    """Label Studio's Start Training; waits for a job of that status in the backend's list."""
    ls, backend, pid = loop["ls"], loop["backend"], loop["pid"]
    ls.start_training(loop["ml"])
    wait_for(lambda: [j for j in backend.get(f"/projects/{pid}/jobs").json()["jobs"] if j["status"] == status],
             60, what=f"a {status} training job")


def train_and_promote(loop: dict) -> str:
    """Start Training, a burst worker (training, then the refresh its promotion queued); the
    promoted version."""
    start_training(loop, "queued")
    run_worker(loop["backend"], loop["root"])
    [job] = [j for j in loop["backend"].get(f"/projects/{loop['pid']}/jobs").json()["jobs"] if j["status"] != "refused"]
    assert job["status"] == "finished" and job["result"]["promoted"] is True, job
    return job["result"]["version"]


def admin_page_screenshot(loop: dict, artifacts) -> str:
    """The admin page after the loop (jobs, the refresh card, annotators by name); its text."""
    with chromium_page(artifacts) as page:
        page.goto(f"{loop['backend'].url}/?project={loop['pid']}")
        page.screenshot(path=str(page.artifacts / "admin-after-loop.png"), full_page=True)
        return page.locator("body").inner_text()


def test_label_train_promote_refresh_and_least_certain_first(loop, tmp_path):
    ls, backend, pid = loop["ls"], loop["backend"], loop["pid"]
    in_browser = label_in_the_browser(loop, artifacts_dir(tmp_path))
    start_training(loop, "refused")  # fewer agreed tasks than AESEMO_MIN_TRAINING_LABELS
    unlabelled = label_the_rest_through_the_api(loop, in_browser)
    agreed = wait_until(lambda: backend.get(f"/projects/{pid}/consensus").json()["aesthetic"]["tasks"]["agreed"],
                        lambda n: n == N_LABELLED, timeout=120)
    assert agreed == N_LABELLED

    version = train_and_promote(loop)
    assert version.startswith("v0001-"), version
    refreshed = [j for j in backend.get(f"/projects/{pid}/refresh").json()["jobs"]
                 if j["progress"].get("version") == version]
    assert [(j["status"], j["progress"]["written"]) for j in refreshed] == [("finished", len(unlabelled))], refreshed
    # the refresh job's task list made the unlabelled tasks known: no resync needed to count them
    assert backend.get(f"/projects/{pid}/consensus").json()["aesthetic"]["tasks"]["no_votes"] == len(unlabelled)

    scores = {}
    for task in unlabelled:
        [prediction] = ls.predictions(task)
        assert prediction["model_version"] == version, prediction
        scores[task] = prediction["score"]
    assert len(set(scores.values())) == len(scores), scores  # a real ordering to check
    wait_for(lambda: sorts_by(ls, pid, version), 60, interval=1, what=f"project {pid} sorting by {version}")
    [tab] = tabs(ls, pid)
    listed = [t for t in tasks_in_tab(ls, pid, tab["id"]) if t["id"] in scores]
    assert [t["id"] for t in listed] == sorted(scores, key=scores.get), (listed, scores)
    least_certain = min(scores, key=scores.get)
    assert ls.api_json("GET", f"/api/projects/{pid}/next", params={"view": tab["id"]})["id"] == least_certain

    page = admin_page_screenshot(loop, artifacts_dir(tmp_path))
    assert "Prediction refresh" in page and version in page and "refused" in page, page
    assert loop["annotator"] in page, page  # by email, from Label Studio's users API
