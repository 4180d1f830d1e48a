"""An untrained model never poses as a trained one: model.json and `aesemo info` say whether a
version was trained on labels, base versions are named `-untrained`, and by default `/predict`
sends no suggestions from such a version (`[]` per task, nothing fetched), with the reason in
`/setup`'s answer, one log line and the admin page, until the project serves a trained version."""
from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from backend.cli import main
from backend.http.app import create_app
from backend.labelstudio.label_config import parse_label_config
from backend.serving.registry import base_version_name, base_version_ref, project_versions_dir, set_current_version
from backend.serving.suggestions import WITHHELD_FIELD
from model.network import NetConfig
from model.pipeline import init_version
from model.version import META_FILE, is_trained, read_meta

from training_project import example, predict_body, setup_answer, setup_project, write_small_version

PROJECT = 5


@pytest.fixture
def default_settings(settings, images, redis_client):
    """The service's default: suggestions from untrained versions off (and Redis flushed)."""
    return replace(settings, suggest_untrained=False, allowed_image_hosts=(images.netloc,))


@pytest.fixture
def classes():
    return parse_label_config(example("setup.json")["schema"]).classes()


@pytest.fixture
def small_base(default_settings, classes):
    """The base version for the project's classes, small so it loads in a moment, untrained as
    every base version that `ensure_base_version` writes."""
    ref = base_version_ref(default_settings, classes)
    write_small_version(ref.folder, seed=1, trained=False)
    return ref


def urls(images, count=2):
    return [images.url(f"/img/{n}.png") for n in range(1, count + 1)]


@pytest.mark.parametrize("meta, trained", [
    ({"trained": False, "metrics": {"aesthetic": {"accuracy": 0.5}}}, False),  # the field wins
    ({"trained": True}, True),
    ({}, False),                                                             # written before the field
    ({"metrics": {"aesthetic": {"accuracy": 0.5}}}, True),
    ({"training": {"seconds": 12.0}}, True),
])
def test_trained_is_the_field_else_a_training_history(meta, trained):
    assert is_trained(meta) is trained


def test_a_new_version_and_the_base_version_are_marked_untrained(tmp_path, default_settings, classes):
    init_version(tmp_path / "new", NetConfig(backbone="resnet18", num_groups=2, fc_width=64), use_pretrained=False)
    assert read_meta(tmp_path / "new")["trained"] is False
    assert base_version_name(default_settings, classes).endswith("-untrained")


def test_aesemo_info_says_trained_also_for_a_model_json_without_the_field(tmp_path, capsys):
    write_small_version(tmp_path / "old", seed=2)
    meta_file = tmp_path / "old" / META_FILE
    meta = json.loads(meta_file.read_text())
    del meta["trained"]
    meta_file.write_text(json.dumps(meta))
    assert main(["info", str(tmp_path / "old")]) == 0
    assert json.loads(capsys.readouterr().out)["trained"] is False


def test_by_default_an_untrained_version_suggests_nothing_and_says_why_once(default_settings, small_base, images,
                                                                            caplog):
    client = create_app(default_settings).test_client()
    images.reset()
    with caplog.at_level(logging.WARNING, logger="backend.serving.suggestions"):
        setup = client.post("/setup", json={**example("setup.json"), "project": f"{PROJECT}.1795782039"}).get_json()
        answers = [client.post("/predict", json=predict_body(PROJECT, urls(images))) for _ in range(2)]
    assert setup["model_version"] == small_base.name
    assert "never trained" in setup[WITHHELD_FIELD] and str(default_settings.min_training_labels) in setup[WITHHELD_FIELD]
    for answer in answers:
        assert answer.status_code == 200
        assert answer.get_json()["results"] == [[], []]  # one empty list per task: Label Studio stores nothing
    assert images.paths() == []  # no image is fetched for suggestions that are not sent
    lines = [r.getMessage() for r in caplog.records if "no suggestions" in r.getMessage()]
    assert len(lines) == 1 and f"project {PROJECT}" in lines[0] and small_base.name in lines[0]


def test_a_trained_current_version_suggests(default_settings, small_base, images, redis_client):
    client = create_app(default_settings).test_client()
    setup_project(client, PROJECT)
    write_small_version(project_versions_dir(default_settings, str(PROJECT)) / "v0001-trained", seed=3)
    set_current_version(redis_client, str(PROJECT), "v0001-trained")
    setup = client.post("/setup", json={**example("setup.json"), "project": f"{PROJECT}.1795782039"}).get_json()
    assert setup == {"model_version": "v0001-trained"}
    results = client.post("/predict", json=predict_body(PROJECT, urls(images))).get_json()["results"]
    assert [item["model_version"] for item in results] == ["v0001-trained"] * 2


def test_the_setting_sends_an_untrained_versions_suggestions_under_its_untrained_name(default_settings, small_base,
                                                                                     images):
    client = create_app(replace(default_settings, suggest_untrained=True)).test_client()
    assert setup_answer(client, PROJECT) == small_base.name
    results = client.post("/predict", json=predict_body(PROJECT, urls(images, 1))).get_json()["results"]
    assert results[0]["model_version"].endswith("-untrained")


def test_the_admin_page_warns_while_the_project_serves_an_untrained_version(default_settings, small_base,
                                                                            redis_client):
    client = create_app(default_settings).test_client()
    setup_project(client, PROJECT)
    page = client.get("/").get_data(as_text=True)
    banner = page[page.index('id="untrained-banner"'):page.index('id="training"')]
    assert small_base.name in banner and "random" in banner and "start training" in banner
    assert "Label Studio gets none" in banner
    write_small_version(project_versions_dir(default_settings, str(PROJECT)) / "v0001-trained", seed=3)
    set_current_version(redis_client, str(PROJECT), "v0001-trained")
    assert 'id="untrained-banner"' not in client.get("/").get_data(as_text=True)


# ----- the evidence gate: a task type is suggested only when its held-out evidence beats the trivial answer

STRONG = [[18, 2], [1, 19]]           # 37 of 40 right; the majority class is half
WEAK = [[6, 0], [0, 2]]               # 8 of 8 right, but 6 of 8 are one class: no interval clears 0.75
EIGHT = [[1 if i == j else 0 for j in range(8)] for i in range(8)]   # 8 right of 8, one per class


def evidence(aesthetic, emotion) -> dict:
    return {"aesthetic": {"confusion": aesthetic} if aesthetic else None,
            "emotion": {"confusion": emotion} if emotion else None}


def test_the_gate_withholds_a_type_whose_interval_does_not_clear_the_majority_rate(default_settings):
    from backend.serving.suggestions import evidence_problem, withheld_types
    gated = replace(default_settings, suggestion_gate=True)
    assert evidence_problem({"confusion": STRONG}) is None
    why = evidence_problem({"confusion": WEAK})
    assert "held-out accuracy 1.00" in why and "8 tasks" in why and "0.75" in why, why
    assert evidence_problem(None).startswith("no held-out evidence")
    assert withheld_types(gated, {"trained": True, "metrics": evidence(STRONG, WEAK)}).keys() == {"emotion"}
    assert withheld_types(gated, {"trained": True, "metrics": evidence(STRONG, None)}).keys() == {"emotion"}
    assert withheld_types(gated, {"trained": True, "metrics": evidence(STRONG, EIGHT)}) == {}
    # the setting switches the gate off; an untrained version is judged whole elsewhere
    assert withheld_types(replace(gated, suggestion_gate=False), {"trained": True, "metrics": evidence(WEAK, WEAK)}) == {}
    assert withheld_types(gated, {"trained": False}) == {}


def test_predict_and_setup_leave_out_a_withheld_type_and_say_why(default_settings, small_base, images, redis_client,
                                                                 caplog):
    gated = replace(default_settings, suggestion_gate=True)
    client = create_app(gated).test_client()
    setup_project(client, PROJECT)
    write_small_version(project_versions_dir(gated, str(PROJECT)) / "v0001-thin", seed=3,
                        metrics=evidence(STRONG, WEAK))
    set_current_version(redis_client, str(PROJECT), "v0001-thin")
    setup = client.post("/setup", json={**example("setup.json"), "project": f"{PROJECT}.1795782039"}).get_json()
    assert set(setup["withheld_types"]) == {"emotion"} and "0.75" in setup["withheld_types"]["emotion"]
    answer = client.post("/predict", json=predict_body(PROJECT, urls(images))).get_json()
    assert set(answer["withheld_types"]) == {"emotion"}
    for item in answer["results"]:
        assert [r["from_name"] for r in item["result"]] == ["aesthetic"]
        assert 0 <= item["score"] <= 1   # the task keeps its place in the least-certain ordering
    listed = client.get(f"/projects/{PROJECT}/versions").get_json()["versions"]
    assert set(next(v for v in listed if v["version"] == "v0001-thin")["withheld_types"]) == {"emotion"}
    page = client.get(f"/?project={PROJECT}").get_data(as_text=True)
    assert "emotion" in page and "does not lie above 0" in page
    logged = [r.getMessage() for r in caplog.records if "emotion suggestions" in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith(f"project {PROJECT}: no emotion suggestions: held-out accuracy"), logged


def test_with_the_gate_off_both_types_are_suggested(default_settings, small_base, images, redis_client):
    client = create_app(replace(default_settings, suggestion_gate=False)).test_client()
    setup_project(client, PROJECT)
    write_small_version(project_versions_dir(default_settings, str(PROJECT)) / "v0001-thin", seed=3,
                        metrics=evidence(STRONG, WEAK))
    set_current_version(redis_client, str(PROJECT), "v0001-thin")
    answer = client.post("/predict", json=predict_body(PROJECT, urls(images))).get_json()
    assert "withheld_types" not in answer
    assert all([r["from_name"] for r in item["result"]] == ["aesthetic", "emotion"] for item in answer["results"])


# ----- control tasks: a stable share of the tasks never gets a suggestion

def test_control_tasks_are_a_stable_share_chosen_by_the_task_id():
    from backend.votes.control import is_control_task
    chosen = [t for t in range(1, 20_001) if is_control_task(t, 0.1)]
    assert 0.09 < len(chosen) / 20_000 < 0.11
    assert chosen == [t for t in range(1, 20_001) if is_control_task(t, 0.1)]   # the same every time
    assert not any(is_control_task(t, 0.0) for t in range(1, 1000))
    assert {t for t in range(1, 2000) if is_control_task(t, 0.05)} < set(chosen)  # a smaller share is a subset


def test_a_control_task_gets_an_empty_result_with_its_score(default_settings, small_base, images, redis_client):
    from backend.votes.control import is_control_task
    settings = replace(default_settings, control_fraction=0.1)
    client = create_app(settings).test_client()
    setup_project(client, PROJECT)
    write_small_version(project_versions_dir(settings, str(PROJECT)) / "v0001-trained", seed=3)
    set_current_version(redis_client, str(PROJECT), "v0001-trained")
    body = predict_body(PROJECT, urls(images, 10))
    for n, task in enumerate(body["tasks"]):
        task["id"] = 30 + n            # 39 is a control task at 10 %, its neighbours are not
    assert [t["id"] for t in body["tasks"] if is_control_task(t["id"], 0.1)] == [39]
    results = client.post("/predict", json=body).get_json()["results"]
    by_task = {t["id"]: r for t, r in zip(body["tasks"], results)}
    assert by_task[39]["result"] == [] and 0 <= by_task[39]["score"] <= 1
    assert all(len(r["result"]) == 2 for task, r in by_task.items() if task != 39)
