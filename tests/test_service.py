"""The Flask service end to end: recorded Label Studio 1.23.2 bodies in, real answers out.

Real pieces only: the session's embedded redis-server (conftest), and image servers on
loopback addresses (tests/images_server.py) that the backend is allowed to reach through
`allowed_image_hosts`. No test sends traffic outside 127.0.0.0/8.
"""
from __future__ import annotations

import base64
import copy
import json
import logging
import weakref
from dataclasses import replace

import pytest
import redis
from flask import request, request_started
from prometheus_client.parser import text_string_to_metric_families

from backend.core import keys
from backend.fetch import address_guard
from backend.serving import registry
from backend.http.app import create_app
from backend.labelstudio.label_config import parse_label_config
from backend.labelstudio.projects import ProjectStore
from backend.labelstudio.webhook_events import (EVENT_BYTES_MAX, EVENTS_KEPT, IDS_KEPT, STREAM_MEMORY_MAX, event_json,
                                                record_event)
from backend.core.settings import Settings
from backend.training.queue import project_jobs
from model.network import NetConfig
from model.pipeline import init_version

from canary import Canary  # tests/ is on sys.path (rootdir-relative, no package)
from images_server import ImageServer
from json_server import JsonHandler, LoopbackServer

from ls_examples import EXAMPLES, example

PROJECT = "1.1795782039"
SECRET = "secret-token-XYZ"



def default_config() -> str:
    return example("predict.json")["label_config"]


CUSTOM_CONFIG = """<View>
  <Image name="photo" value="$picture"/>
  <Choices name="beauty" toName="photo" choice="single">
    <Choice value="ugly"/><Choice value="plain"/><Choice value="stunning"/>
  </Choices>
  <Choices name="mood" toName="photo" choice="single">
    <Choice value="joy"/><Choice value="calm"/><Choice value="rage"/><Choice value="gloom"/>
  </Choices>
</View>"""

NO_EMOTION_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="aesthetic" toName="image" choice="single">
    <Choice value="high"/><Choice value="low"/>
  </Choices>
</View>"""


# ----- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    with ImageServer("127.0.0.1") as s:
        yield s


@pytest.fixture(scope="module")
def private_server():
    """On 127.0.0.2, not in allowed_image_hosts: a redirect target that must never be reached."""
    with ImageServer("127.0.0.2") as s:
        yield s


@pytest.fixture(scope="module")
def other_private_server():
    """On 127.0.0.3, not allowed either: a task URL that must be refused before connecting."""
    with ImageServer("127.0.0.3") as s:
        yield s


@pytest.fixture(scope="module")
def base_settings(tmp_path_factory, redis_url, server) -> Settings:
    data = tmp_path_factory.mktemp("service") / "data"
    return replace(Settings(), data_dir=data, redis_url=redis_url, backbone="resnet18",
                   allowed_image_hosts=(server.netloc,), suggest_untrained=True, suggestion_gate=False,
                   control_fraction=0.0, inference_path="pytorch")


@pytest.fixture(scope="module")
def app(base_settings):
    return create_app(base_settings)


@pytest.fixture
def db(redis_client) -> redis.Redis:
    """The session's Redis, flushed before the test."""
    return redis_client


@pytest.fixture
def client(app, db, server, private_server, other_private_server):
    server.reset()
    private_server.reset()
    other_private_server.reset()
    return app.test_client()


def backend_of(flask_app):
    return flask_app.extensions["aesemo"]


def app_with(app, settings: Settings, **changes):
    """A fresh app on changed settings that reuses `app`'s already loaded models (same data
    directory), so the test pays for no second weight load."""
    other = create_app(replace(settings, **changes))
    backend_of(other).models = backend_of(app).models
    return other


def predict_body(urls, project=PROJECT, label_config=None, key="image") -> dict:
    """predict.json's body with one task per URL (ids 1..n)."""
    body = copy.deepcopy(example("predict.json"))
    template = body["tasks"][0]
    tasks = []
    for i, url in enumerate(urls, 1):
        task = copy.deepcopy(template)
        task["id"] = task["inner_id"] = i
        task["data"] = {key: url, "note": f"task {i}"}
        tasks.append(task)
    body["tasks"] = tasks
    body["project"] = project
    if label_config is not None:
        body["label_config"] = label_config
    return body


def post(client, path, body, **kwargs):
    return client.post(path, data=json.dumps(body), content_type="application/json", **kwargs)


def assert_prediction(item, labels, version):
    assert isinstance(item, dict), item
    assert item["model_version"] == version
    regions = item["result"]
    assert [r["from_name"] for r in regions] == [labels.aesthetic_control, labels.emotion_control]
    for region, classes in zip(regions, (labels.aesthetic_classes, labels.emotion_classes)):
        assert region["to_name"] == labels.image_name
        assert region["type"] == "choices"
        assert len(region["value"]["choices"]) == 1
        assert region["value"]["choices"][0] in classes
        assert isinstance(region["score"], float)
        assert 0.0 < region["score"] <= 1.0
    assert isinstance(item["score"], float)
    assert item["score"] == min(r["score"] for r in regions)


def assert_client_error(response, status, *words):
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    error = response.get_json()["error"]
    for word in words:
        assert word in error, (word, error)
    return response.get_json()


def metric_values(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    values = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


# ----- recorded bodies --------------------------------------------------------------------------

def test_health_recorded(client):
    response = client.get("/health")  # LS sends no body
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "UP"
    assert isinstance(body["model_class"], str) and body["model_class"]


def test_setup_recorded_body_remembers_project(client, db):
    body = example("setup.json")
    body = {**body, "access_token": SECRET}
    response = post(client, "/setup", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    reply = response.get_json()
    assert set(reply) == {"model_version"}
    assert isinstance(reply["model_version"], str) and reply["model_version"]

    context = ProjectStore(db).get("1")
    assert context.label_config == body["schema"]
    assert context.hostname == body["hostname"]
    assert context.access_token == SECRET
    assert "1" in ProjectStore(db).known()
    assert SECRET not in response.get_data(as_text=True)


def test_predict_recorded_body(client, server):
    setup = post(client, "/setup", example("setup.json")).get_json()
    body = predict_body([server.url("/img/100.png")])
    response = post(client, "/predict", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    reply = response.get_json()
    labels = parse_label_config(body["label_config"])
    assert len(reply["results"]) == 1
    assert_prediction(reply["results"][0], labels, setup["model_version"])
    assert reply["model_version"] == setup["model_version"]
    assert "errors" not in reply
    assert server.paths() == ["/img/100.png"]
    # /setup's hostname is another origin: the image server never saw the LS token
    assert all(auth is None for _, _, auth in server.requests)


def test_predict_several_tasks_keeps_order(client, server):
    version = post(client, "/setup", example("setup.json")).get_json()["model_version"]
    urls = [server.url(f"/img/{i}.png") for i in range(5)]
    urls[2] = server.url("/missing-2.png")
    response = post(client, "/predict", predict_body(urls))
    assert response.status_code == 200, response.get_data(as_text=True)
    reply = response.get_json()
    labels = parse_label_config(default_config())
    assert len(reply["results"]) == 5
    assert reply["results"][2] == []
    for i in (0, 1, 3, 4):
        assert_prediction(reply["results"][i], labels, version)
    assert [(e["index"], e["task"], e["kind"]) for e in reply["errors"]] == [(2, 3, "not_found")]

    # a different failing position moves the [] with it
    urls = [server.url(f"/img/{i}.png") for i in range(5)]
    urls[0] = urls[4] = server.url("/missing-x.png")
    reply = post(client, "/predict", predict_body(urls)).get_json()
    assert [r == [] for r in reply["results"]] == [True, False, False, False, True]
    assert [e["task"] for e in reply["errors"]] == [1, 5]


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("webhook_*.json")))
def test_webhook_recorded_bodies(client, db, base_settings, name):
    body = copy.deepcopy(example(name))
    token = f"project-token-{name}"
    body["project"]["token"] = token
    before = db.xlen(keys.EVENTS)
    response = post(client, "/webhook", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["action"] == body["action"]
    if body["action"] == "START_TRAINING":
        # no job while the project has too few consensus labels; the answer says why
        training = response.get_json()["training"]
        assert training["started"] is False and "consensus-labelled" in training["error"]
        assert "job" not in response.get_json()  # no train job for Label Studio to record
        assert [j["status"] for j in project_jobs(base_settings, "1")] == ["refused"]  # listed, no job
    assert db.xlen(keys.EVENTS) == before + 1
    entries = db.xrange(keys.EVENTS)
    _, fields = entries[-1]
    event = json.loads(fields["event"])
    assert event["action"] == body["action"]
    assert event["project"] == "1"
    raw = json.dumps(entries)
    assert token not in raw
    assert "label_config" not in raw
    if "annotation" in body:
        assert event["annotation"]["id"] == body["annotation"]["id"]
        assert event["annotation"]["result"] == body["annotation"]["result"]
        assert event["task"]["id"] == body["task"]["id"]
    if "annotations" in body:
        assert event["annotations"] == [a["id"] for a in body["annotations"]]
    if "tasks" in body:
        assert [t["id"] for t in event["tasks"]] == [t["id"] for t in body["tasks"]]


def test_versions_lists_base_after_predict(client, server):
    version = post(client, "/setup", example("setup.json")).get_json()["model_version"]
    assert post(client, "/predict", predict_body([server.url("/img/1.png")])).status_code == 200
    response = client.get("/versions")  # LS sends no body, no query
    assert response.status_code == 200
    assert version in response.get_json()["versions"]


def test_metrics(client, server):
    before = metric_values(client)
    version = post(client, "/setup", example("setup.json")).get_json()["model_version"]
    urls = [server.url("/img/3.png"), server.url("/gone.png"), server.url("/text.txt")]
    assert post(client, "/predict", predict_body(urls)).status_code == 200
    assert post(client, "/predict", {"no": "tasks"}).status_code == 400
    assert client.get("/health").status_code == 200
    after = metric_values(client)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("aesemo_requests_total", endpoint="/predict", method="POST", status="200") == 1
    assert delta("aesemo_requests_total", endpoint="/predict", method="POST", status="400") == 1
    assert delta("aesemo_requests_total", endpoint="/setup", method="POST", status="200") == 1
    assert delta("aesemo_requests_total", endpoint="/health", method="GET", status="200") == 1
    assert delta("aesemo_predictions_total", model_version=version) == 1
    assert delta("aesemo_image_fetch_failures_total", kind="not_found") == 1
    assert delta("aesemo_image_fetch_failures_total", kind="not_image") == 1
    assert any(name == "aesemo_request_seconds_count" for name, _ in after)


# ----- a project with other classes ---------------------------------------------------------

def test_custom_label_config(base_settings, db, server):
    settings = replace(base_settings, aesthetic_control="beauty", emotion_control="mood")
    flask_app = create_app(settings)
    client = flask_app.test_client()
    default_version = registry.base_version_name(base_settings, parse_label_config(default_config()).classes())

    response = post(client, "/setup", {"project": "7.1700000000", "schema": CUSTOM_CONFIG,
                                       "hostname": "http://127.0.0.1:8080", "access_token": "x" * 20})
    assert response.status_code == 200, response.get_data(as_text=True)
    version = response.get_json()["model_version"]
    assert version != default_version

    body = predict_body([server.url("/img/11.png"), server.url("/img/12.png")], project="7.1700000000",
                        label_config=CUSTOM_CONFIG, key="picture")
    response = post(client, "/predict", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    reply = response.get_json()
    labels = parse_label_config(CUSTOM_CONFIG, "beauty", "mood")
    assert labels.aesthetic_classes == ("ugly", "plain", "stunning")
    assert reply["model_version"] == version
    for item in reply["results"]:
        assert_prediction(item, labels, version)
        assert item["result"][0]["to_name"] == "photo"

    # the label config can also come from /setup alone
    del body["label_config"]
    assert post(client, "/predict", body).status_code == 200

    ref = registry.resolve_current(db, settings, "7", labels.classes())
    predictor = backend_of(flask_app).models.load(ref).predictor
    assert predictor.classes == {"aesthetic": ("ugly", "plain", "stunning"),
                                 "emotion": ("joy", "calm", "rage", "gloom")}
    assert predictor.model.branch_a.head[-1].out_features == 3
    assert predictor.model.branch_e.head[-1].out_features == 4


# ----- bad input: a 4xx naming the problem, never a 500 ----------------------------------------

def test_malformed_json(client):
    response = client.post("/predict", data=b'{"tasks": [', content_type="application/json")
    assert_client_error(response, 400, "not valid JSON")
    assert_client_error(client.post("/setup", data=b"", content_type="application/json"), 400, "empty body")
    assert_client_error(post(client, "/predict", ["a", "list"]), 400, "JSON object")
    # nested deeper than the decoder's recursion limit: was a RecursionError -> 500
    for path in ("/predict", "/setup", "/webhook"):
        response = client.post(path, data=b"[" * 100_000, content_type="application/json")
        assert_client_error(response, 400, "not valid JSON", "nested too deeply")


def test_predict_without_tasks(client):
    body = example("predict.json")
    del body["tasks"]
    assert_client_error(post(client, "/predict", body), 400, "tasks")
    assert_client_error(post(client, "/predict", {**body, "tasks": {"id": 1}}), 400, "tasks")


def test_tasks_without_image_field(client, server):
    body = predict_body([server.url("/img/1.png")], key="picture")
    reply = assert_client_error(post(client, "/predict", body), 422, "data.image")
    assert reply["errors"][0]["kind"] == "missing_image_field"
    assert server.paths() == []


def test_image_404(client, server):
    reply = assert_client_error(post(client, "/predict", predict_body([server.url("/nope.png")])), 422,
                                "/nope.png", "404")
    assert reply["errors"][0]["kind"] == "not_found"


def test_image_host_401(client, server):
    reply = assert_client_error(post(client, "/predict", predict_body([server.url("/auth.png")])), 422,
                                "/auth.png", "401")
    assert reply["errors"][0]["kind"] == "unauthorized"
    assert server.paths() == ["/auth.png"]


def test_redirect_to_private_address(client, server, private_server):
    target = private_server.url("/x")
    url = server.url(f"/redirect?to={target}")
    reply = assert_client_error(post(client, "/predict", predict_body([url])), 422, "127.0.0.2")
    assert reply["errors"][0]["kind"] == "forbidden_address"
    assert server.paths() == [f"/redirect?to={target}"]
    assert private_server.paths() == []  # refused before connecting


def test_private_address_refused_before_connecting(client, other_private_server):
    url = other_private_server.url("/a.png")
    reply = assert_client_error(post(client, "/predict", predict_body([url])), 422, "127.0.0.3",
                                "AESEMO_ALLOWED_IMAGE_HOSTS")
    assert reply["errors"][0]["kind"] == "forbidden_address"
    assert other_private_server.paths() == []


def test_not_an_image(client, server):
    for path in ("/text.txt", "/fake.png"):
        reply = assert_client_error(post(client, "/predict", predict_body([server.url(path)])), 422, path)
        assert reply["errors"][0]["kind"] == "not_image"


def test_image_over_byte_limit(app, base_settings, db, server):
    client = app_with(app, base_settings, max_image_bytes=2000).test_client()
    reply = assert_client_error(post(client, "/predict", predict_body([server.url("/big.png")])), 422,
                                "/big.png", "2000 bytes")
    assert reply["errors"][0]["kind"] == "too_large"


def test_image_over_pixel_limit(app, base_settings, db, server):
    client = app_with(app, base_settings, max_image_pixels=1000).test_client()
    reply = assert_client_error(post(client, "/predict", predict_body([server.url("/big.png")])), 422,
                                "/big.png", "pixels")
    assert reply["errors"][0]["kind"] == "too_large"


def test_label_config_without_controls(client, server):
    setup = {**example("setup.json"), "schema": NO_EMOTION_CONFIG}
    assert_client_error(post(client, "/setup", setup), 422, "'emotion'")
    body = predict_body([server.url("/img/1.png")], label_config=NO_EMOTION_CONFIG)
    assert_client_error(post(client, "/predict", body), 422, "'emotion'")
    assert server.paths() == []


def test_choices_the_model_does_not_know(client, db, base_settings, server):
    folder = registry.project_versions_dir(base_settings, "5") / "v-other"
    init_version(folder, NetConfig(backbone="resnet18", aesthetic_classes=("pretty", "ugly"),
                                   emotion_classes=("happy", "sad", "bored")), use_pretrained=False)
    registry.set_current_version(db, "5", "v-other")

    setup = post(client, "/setup", {**example("setup.json"), "project": "5.1700000000"})
    assert setup.status_code == 200
    assert setup.get_json()["model_version"] == "v-other"

    body = predict_body([server.url("/img/1.png")], project="5.1700000000")
    assert_client_error(post(client, "/predict", body), 409, "v-other", "aesthetic", "'high'", "'low'")


def test_basic_auth(app, base_settings, db, server):
    client = app_with(app, base_settings, basic_auth_user="ls-user", basic_auth_pass="ls-pass").test_client()

    def basic(user, password):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    for headers in ({}, basic("ls-user", "wrong"), basic("intruder", "ls-pass"), {"Authorization": "Basic !!"}):
        response = client.get("/health", headers=headers)
        assert_client_error(response, 401, "Basic")
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert_client_error(post(client, "/predict", predict_body([server.url("/img/1.png")]), headers=headers),
                            401, "Basic")
        response = post(client, "/webhook", example("webhook_ANNOTATION_CREATED.json"), headers=headers)
        assert_client_error(response, 401, "Basic")
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert server.paths() == []
    assert db.xlen(keys.EVENTS) == 0

    good = basic("ls-user", "ls-pass")
    assert client.get("/health", headers=good).status_code == 200
    assert post(client, "/setup", example("setup.json"), headers=good).status_code == 200
    response = post(client, "/predict", predict_body([server.url("/img/1.png")]), headers=good)
    assert response.status_code == 200, response.get_data(as_text=True)
    response = post(client, "/webhook", example("webhook_ANNOTATION_CREATED.json"), headers=good)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert db.xlen(keys.EVENTS) == 1


def test_unknown_webhook_action(client, db):
    body = {**example("webhook_PROJECT_UPDATED.json"), "action": "PROJECT_EXPLODED"}
    assert_client_error(post(client, "/webhook", body), 400, "PROJECT_EXPLODED")
    assert_client_error(post(client, "/webhook", {"project": {"id": 1}}), 400, "action")
    # an unhashable action: was a TypeError in `action not in ACTIONS` -> 500
    for action in (["ANNOTATION_CREATED"], {"a": 1}):
        assert_client_error(post(client, "/webhook", {**body, "action": action}), 400, "unknown webhook action")
    assert db.xlen(keys.EVENTS) == 0


def test_webhook_missing_keys(client, db):
    created = example("webhook_ANNOTATION_CREATED.json")
    body = {k: v for k, v in created.items() if k != "task"}
    assert_client_error(post(client, "/webhook", body), 400, "ANNOTATION_CREATED", "task")
    body = {k: v for k, v in created.items() if k != "project"}
    assert_client_error(post(client, "/webhook", body), 400, "project")
    body = {**created, "annotation": {"result": []}}
    assert_client_error(post(client, "/webhook", body), 400, "annotation")
    deleted = example("webhook_ANNOTATIONS_DELETED.json")
    assert_client_error(post(client, "/webhook", {"action": deleted["action"], "project": deleted["project"]}),
                        400, "annotations")
    assert_client_error(post(client, "/webhook", {**deleted, "project": "not-a-project"}), 400, "project")
    assert db.xlen(keys.EVENTS) == 0


def webhook_cases() -> list[tuple[str, bytes]]:
    """Bodies for /webhook with every kind of answer: votes, other events, and each error."""
    created = example("webhook_ANNOTATION_CREATED.json")
    unknown = copy.deepcopy(created)
    unknown["project"] = {"id": 77}
    bad_config = copy.deepcopy(created)
    bad_config["project"]["label_config"] = "<View><broken"
    no_author = copy.deepcopy(created)
    del no_author["annotation"]["completed_by"]
    cases = [("created", created), ("again", created), ("updated", example("webhook_ANNOTATION_UPDATED.json")),
             ("deleted", example("webhook_ANNOTATIONS_DELETED.json")), ("unknown project", unknown),
             ("bad label config", bad_config), ("no author", no_author), ("no action", {"project": 1}),
             ("not an object", [1, 2]), ("no task", {k: v for k, v in created.items() if k != "task"})]
    return [(name, json.dumps(body).encode()) for name, body in cases] + \
        [("empty", b""), ("not JSON", b"{oops"), ("deep", b"[" * 100_000)]


def test_webhook_answers_each_bad_body_with_its_status(app, client, db):
    answers = [(name, c.status_code) for name, data in webhook_cases()
               for c in [client.post("/webhook", data=data, content_type="application/json")]]
    assert [status for _, status in answers] == [200, 200, 200, 200, 404, 422, 400, 400, 400, 400, 400, 400, 400]
    assert all(client.post("/webhook", data=data, content_type="application/json").is_json
               for _, data in webhook_cases())


def test_webhook_answers_and_metrics_are_counted(app, client, db):
    """Every request goes through Flask's request handling, /webhook included, and is counted."""
    seen = []

    def started(sender, **extra):
        seen.append(request.path)

    before = metric_values(client)
    with request_started.connected_to(started, app):
        assert post(client, "/webhook", example("webhook_ANNOTATION_CREATED.json")).status_code == 200
        assert post(client, "/webhook", {"action": "NOPE", "project": 1}).status_code == 400
        assert client.get("/webhook").status_code == 405  # not a POST: Flask's answer
        assert client.get("/health").status_code == 200
    assert seen == ["/webhook", "/webhook", "/webhook", "/health"]
    after = metric_values(client)

    def delta(**labels):
        key = ("aesemo_requests_total", tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta(endpoint="/webhook", method="POST", status="200") == 1
    assert delta(endpoint="/webhook", method="POST", status="400") == 1
    key = ("aesemo_request_seconds_count", (("endpoint", "/webhook"),))
    assert after[key] - before.get(key, 0.0) == 2


def test_webhook_over_the_body_limit_is_413(client, db):
    from backend.http.app import MAX_BODY_BYTES
    response = client.post("/webhook", data=b"{}", content_type="application/json",
                           environ_overrides={"CONTENT_LENGTH": str(MAX_BODY_BYTES + 1)})
    assert_client_error(response, 413, "body over")
    assert db.xlen(keys.EVENTS) == 0


@pytest.mark.parametrize("region", [
    {"from_name": ["aesthetic"], "to_name": "image", "type": "choices", "value": {"choices": ["high"]}},
    {"from_name": "aesthetic", "to_name": "image", "type": "choices", "value": "high"},
    {"from_name": "aesthetic", "to_name": "image", "type": "choices", "value": ["high"]},
    {"from_name": "aesthetic", "to_name": "image", "type": "choices", "value": {"choices": 5}},
    {"from_name": "aesthetic", "to_name": "image", "type": "choices", "value": {"choices": {"high": 1}}},
    "not a region",
], ids=["from_name-list", "value-str", "value-list", "choices-int", "choices-dict", "region-str"])
def test_webhook_malformed_annotation_result(client, db, region):
    """A region the backend cannot read is no vote, not a crash (these were TypeError /
    AttributeError / KeyError -> 500 in votes._choices)."""
    body = copy.deepcopy(example("webhook_ANNOTATION_CREATED.json"))
    body["annotation"]["result"] = [region]
    response = post(client, "/webhook", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert db.xlen(keys.EVENTS) == 1


def test_too_many_tasks(app, base_settings, db, server):
    client = app_with(app, base_settings, max_tasks_per_request=3).test_client()
    body = predict_body([server.url("/img/1.png")] * 4)
    assert_client_error(post(client, "/predict", body), 413, "4 tasks", "limit is 3")
    assert server.paths() == []
    assert post(client, "/predict", predict_body([server.url("/img/1.png")] * 3)).status_code == 200


def test_large_request_in_bounded_chunks(app, client, db, base_settings, server):
    # 40 = 16 + 16 + 8: full chunks and a short last one (200 works the same, but costs
    # about a minute of CPU inference on a 2-core machine)
    assert base_settings.predict_chunk_size == 16
    count = 40
    body = predict_body([server.url("/img/5.png")] * count)
    labels = parse_label_config(body["label_config"])
    ref = registry.resolve_current(db, base_settings, "1", labels.classes())
    predictor = backend_of(app).models.load(ref).predictor

    original = predictor.predict_images
    batches: list[int] = []
    alive_at_call: list[int] = []
    refs: list[weakref.ref] = []

    def counting_predict_images(images, batch_size=16):
        # an instrument, not a stand-in: it records and then delegates to the real method
        refs.extend(weakref.ref(image) for image in images)
        batches.append(len(images))
        alive_at_call.append(sum(r() is not None for r in refs))
        return original(images, batch_size=batch_size)

    predictor.predict_images = counting_predict_images
    try:
        response = post(client, "/predict", body)
    finally:
        del predictor.predict_images
    assert response.status_code == 200, response.get_data(as_text=True)
    results = response.get_json()["results"]
    assert len(results) == count
    for item in results:
        assert_prediction(item, labels, ref.name)
    assert sum(batches) == count
    assert max(batches) <= 16
    assert max(alive_at_call) <= 16  # earlier chunks' images are gone when the next is predicted


# ----- staying up, answering fast, keeping secrets ----------------------------------------------

def test_service_stays_up_after_failures(client, server):
    good = predict_body([server.url("/img/2.png")])
    failures = [
        client.post("/predict", data=b"{oops", content_type="application/json"),
        post(client, "/predict", predict_body([server.url("/missing.png")])),
        post(client, "/predict", predict_body([server.url("/text.txt")])),
        post(client, "/webhook", {"action": "NOPE"}),
        post(client, "/setup", {"project": "1", "schema": "<View><broken"}),
        post(client, "/predict", {**good, "project": {"not": "an id"}}),
        client.get("/no-such-endpoint"),
        client.get("/predict"),
    ]
    for response in failures:
        assert 400 <= response.status_code < 500, (response.status_code, response.get_data(as_text=True))
        assert response.get_json()["error"]
    response = post(client, "/predict", good)
    assert response.status_code == 200
    assert response.get_json()["results"][0]["result"]
    assert client.get("/health").status_code == 200


def test_every_webhook_is_recorded(client, db):
    """Their speed is measured by benchmarks/consensus.py and benchmarks/serve.py."""
    body = copy.deepcopy(example("webhook_ANNOTATION_CREATED.json"))
    for i in range(50):
        body["annotation"]["id"] = 1000 + i
        assert post(client, "/webhook", body).status_code == 200
    assert db.xlen(keys.EVENTS) == 50


def forty_megabyte_annotation() -> dict:
    """An annotation event whose result also holds a 40 MB text region (not a vote's)."""
    body = copy.deepcopy(example("webhook_ANNOTATION_CREATED.json"))
    body["annotation"]["result"].append({"from_name": "notes", "to_name": "image", "type": "textarea",
                                         "value": {"text": ["x" * 40_000_000]}})
    return body


def many_deleted_annotations() -> dict:
    body = copy.deepcopy(example("webhook_ANNOTATIONS_DELETED.json"))
    body["annotations"] = [{"id": 2 ** 63 - 1 - n} for n in range(5_000)]
    return body


@pytest.mark.parametrize("make", [forty_megabyte_annotation, many_deleted_annotations])
def test_a_huge_event_adds_a_bounded_entry_to_the_audit_stream(client, db, make):
    body = make()
    assert post(client, "/webhook", example("webhook_PROJECT_UPDATED.json")).status_code == 200  # the stream exists
    before = db.memory_usage(keys.EVENTS, samples=0)
    response = post(client, "/webhook", body)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    grown = db.memory_usage(keys.EVENTS, samples=0) - before
    print(f"{make.__name__}: the stream grew by {grown} bytes")
    assert grown <= EVENT_BYTES_MAX + 1024, grown  # the entry, and Redis's own overhead for it
    _, fields = db.xrange(keys.EVENTS)[-1]
    assert len(fields["event"]) <= EVENT_BYTES_MAX
    # what an audit reads is still there: the action, the project, the ids, and why the rest is not
    event = json.loads(fields["event"])
    assert (event["action"], event["project"]) == (body["action"], "1")
    assert "over the 4096 an audit entry keeps" in event["cut"]
    if "annotation" in body:
        assert event["annotation"] == {"id": 1, "task": 1, "completed_by": 2} and event["task"] == {"id": 1}
        assert response.get_json()["votes"] == ["added"]  # the vote itself is unaffected
    else:
        assert event["annotations"] == [a["id"] for a in body["annotations"][:IDS_KEPT]]
        assert event["annotations_count"] == 5_000


def test_the_audit_stream_holds_at_most_its_memory_bound(db):
    """Full of the largest entries kept, and more: the oldest go, and the stream's Redis memory
    stays under STREAM_MEMORY_MAX."""
    event = {"action": "ANNOTATION_CREATED", "project": "1", "received_at": 1795782039.123456,
             "annotation": {"id": 2 ** 63 - 1, "result": [{"value": {"text": [""]}}]}}
    event["annotation"]["result"][0]["value"]["text"][0] = "x" * (EVENT_BYTES_MAX - len(event_json(event)))
    assert len(event_json(event)) == EVENT_BYTES_MAX
    pipe = db.pipeline(transaction=False)
    for n in range(EVENTS_KEPT + 500):
        record_event(pipe, event)
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()
    used = db.memory_usage(keys.EVENTS, samples=0)
    print(f"{db.xlen(keys.EVENTS)} entries of {EVENT_BYTES_MAX} bytes: {used} bytes of Redis memory")
    assert db.xlen(keys.EVENTS) <= EVENTS_KEPT + 100  # trimmed by whole nodes (`MAXLEN ~`)
    assert used <= STREAM_MEMORY_MAX, used


# ----- whose token goes where; what /setup may store ---------------------------------------------

KEY = "operator-key-0123456789abcdef"


def setup_with(hostname=None, access_token=None, project=PROJECT) -> dict:
    body = {**example("setup.json"), "project": project}
    body.pop("hostname"), body.pop("access_token")
    return {**body, **({"hostname": hostname} if hostname is not None else {}),
            **({"access_token": access_token} if access_token is not None else {})}


@pytest.mark.parametrize("access_token", [None, "setup-token-abc"])
def test_setup_hostname_never_gets_the_operator_key(app, base_settings, db, access_token):
    # The probe's repro: LABEL_STUDIO_API_KEY set, LABEL_STUDIO_URL not, /setup names a port
    # on loopback, then /predict with a relative image and a resync.
    keyed = app_with(app, base_settings, label_studio_api_key=KEY).test_client()
    with Canary() as canary:
        assert post(keyed, "/setup", setup_with(canary.base, access_token)).status_code == 200
        reply = assert_client_error(post(keyed, "/predict", predict_body(["/data/upload/1/a.png"])), 422)
        assert reply["errors"][0]["kind"] == "forbidden_address"
        assert_client_error(keyed.post("/projects/1/resync"), 409)
        assert canary.hits == 0 and KEY.encode() not in canary.received


def test_setup_hostname_allowed_by_the_operator_still_never_gets_the_key(app, base_settings, db):
    with Canary() as canary:
        keyed = app_with(app, base_settings, label_studio_api_key=KEY,
                         allowed_image_hosts=(f"127.0.0.1:{canary.port}",)).test_client()
        assert post(keyed, "/setup", setup_with(canary.base, "setup-token-abc")).status_code == 200
        post(keyed, "/predict", predict_body(["/data/upload/1/a.png"]))
        assert_client_error(keyed.post("/projects/1/resync"), 502)  # it was reached: it is no Label Studio
        assert canary.hits >= 2 and b"/data/upload/1/a.png" in canary.received
        assert KEY.encode() not in canary.received and b"setup-token-abc" in canary.received


def test_label_studio_url_gets_the_key_without_an_allow_list(app, base_settings, db, private_server):
    # LABEL_STUDIO_URL on a loopback address not in AESEMO_ALLOWED_IMAGE_HOSTS (aesemo stack's
    # case): trusted, and the key goes there; so does a /setup hostname of the same origin.
    ls_url = private_server.url("")
    keyed = app_with(app, base_settings, label_studio_url=ls_url, label_studio_api_key=KEY).test_client()
    assert post(keyed, "/setup", setup_with(ls_url, "setup-token-abc")).status_code == 200
    response = post(keyed, "/predict", predict_body(["/img/7.png", private_server.url("/img/8.png")]))
    assert response.status_code == 200 and "errors" not in response.get_json(), response.get_json()
    # the Data Manager setup after /setup (backend/labelstudio/follow.py) calls its API too
    images = [r for r in private_server.requests if r[1].startswith("/img/")]
    assert sorted(images) == [("GET", "/img/7.png", f"Token {KEY}"), ("GET", "/img/8.png", f"Token {KEY}")]


def test_resync_checks_the_address_it_connected_to(app, base_settings, db, monkeypatch):
    # Our lookup says "public", the connection lands on loopback (DNS rebinding): the Label
    # Studio SDK's connection is checked as the image downloads' are, before a byte is sent.
    client = app.test_client()
    with Canary() as canary:
        assert post(client, "/setup", setup_with(canary.base, "setup-token-abc")).status_code == 200
        monkeypatch.setattr(address_guard, "_resolve_addresses", lambda host, port: ["93.184.216.34"])
        assert_client_error(client.post("/projects/1/resync"), 409, "AESEMO_ALLOWED_IMAGE_HOSTS")
        canary.settle()
        assert canary.received == b""


class _StudioWithoutProjects(JsonHandler):
    """Label Studio's project API as it answers for a project it does not have (404), or, for
    project 98, as it answers when it fails (500)."""

    def do_GET(self):
        self.server.paths.append(self.path)
        if self.path.startswith("/api/projects/98"):
            self.answer(500, {"detail": "A server error occurred."})
        else:
            self.answer(404, {"detail": "Not found."})


@pytest.fixture
def studio_without_projects():
    studio = LoopbackServer(_StudioWithoutProjects)
    studio.server.paths = []
    yield studio
    studio.close()


def test_resync_of_a_project_label_studio_does_not_know_is_404(app, base_settings, db, studio_without_projects):
    client = app_with(app, base_settings, label_studio_url=studio_without_projects.url,
                      label_studio_api_key=KEY).test_client()
    assert_client_error(client.post("/projects/99/resync"), 404, "unknown project 99")
    assert studio_without_projects.server.paths == ["/api/projects/99/"]   # Label Studio was asked
    # Label Studio failing is still its failure, not an unknown project
    assert_client_error(client.post("/projects/98/resync"), 502, "project 98")


@pytest.mark.parametrize("hostname", [
    "javascript:alert(document.domain)//", "JavaScript://x.example/%0aalert(1)", "data:text/html,<b>x</b>",
    "ftp://x.example", "127.0.0.1:8080", "http://", "http://user:pw@x.example", "http://x.example:99999",
    "http://x.example/\n", "http://" + "x" * 3000 + ".example", 5, ["http://x.example"], {"url": "x"}, True,
])
def test_setup_refuses_a_hostname_that_is_no_http_url(client, db, hostname):
    response = post(client, "/setup", setup_with(hostname, "setup-token-abc"))
    assert_client_error(response, 400, '"hostname"', "http(s) URL")
    assert db.hgetall(keys.setup("1")) == {} and db.smembers(keys.PROJECTS) == set()


@pytest.mark.parametrize("token", ["a b", "tok\r\nX-Injected: 1", "x" * 5000, 5, ["t"], "tök"])
def test_setup_refuses_a_malformed_access_token_without_echoing_it(client, db, token):
    response = post(client, "/setup", setup_with("http://label-studio:8080", token))
    assert_client_error(response, 400, '"access_token"')
    if isinstance(token, str):
        assert token not in response.get_data(as_text=True)
    assert db.hgetall(keys.setup("1")) == {}


def test_setup_keeps_hostname_and_token_as_a_pair(client, db):
    # A later /setup that names only a hostname must not inherit the token sent with another.
    assert post(client, "/setup", setup_with("http://label-studio:8080", "setup-token-abc")).status_code == 200
    assert post(client, "/setup", setup_with("http://elsewhere.example")).status_code == 200
    context = ProjectStore(db).get("1")
    assert (context.hostname, context.access_token) == ("http://elsewhere.example", None)
    assert post(client, "/setup", setup_with()).status_code == 200  # names neither: both stay
    assert ProjectStore(db).get("1").hostname == "http://elsewhere.example"


# ----- ids -----------------------------------------------------------------------------------------

HUGE = "9" * 5000


@pytest.mark.parametrize("project", [HUGE + ".1", "9223372036854775808", "0", "-1", "1e3", "١", True, 1.5, None])
def test_setup_refuses_project_ids_out_of_range(client, db, project):
    assert_client_error(post(client, "/setup", setup_with(project=project)), 400, '"project"')
    assert db.smembers(keys.PROJECTS) == set()
    assert client.get("/").status_code == 200


def test_project_ids_are_stored_in_one_spelling(client, db):
    assert post(client, "/setup", setup_with(project="007.1795782039")).status_code == 200
    assert db.smembers(keys.PROJECTS) == {"7"}


@pytest.mark.parametrize("path", ["/projects/{}/consensus", "/projects/{}/jobs", "/projects/{}/versions"])
@pytest.mark.parametrize("project", [HUGE, "9223372036854775808", "0"])
def test_project_ids_in_urls_are_bounded(client, db, path, project):
    assert_client_error(client.get(path.format(project)), 400, '"project"')


def test_largest_project_id_in_a_url_is_accepted(client, db):
    response = client.get(f"/projects/{2**63 - 1}/jobs")
    assert response.status_code == 200, response.get_data(as_text=True)


def annotation_event(**changes) -> dict:
    body = copy.deepcopy(example("webhook_ANNOTATION_CREATED.json"))
    for path, value in changes.items():
        target = body
        *parents, leaf = path.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return body


@pytest.mark.parametrize("field, path", [("annotation.id", "annotation__id"), ("task.id", "task__id"),
                                         ("annotation.completed_by", "annotation__completed_by"),
                                         ("annotation.task", "annotation__task")])
@pytest.mark.parametrize("value", [True, 1.5, 2**63, "7", -3, 0, [1]])
def test_webhook_ids_out_of_range_are_400_naming_the_field(client, db, field, path, value):
    assert_client_error(post(client, "/webhook", annotation_event(**{path: value})), 400, f'"{field}"')
    assert db.hlen(keys.votes("1")) == 0


def test_webhook_id_of_5000_digits_is_400(client, db):
    raw = json.dumps(example("webhook_ANNOTATION_CREATED.json")).replace('"id": 1,', f'"id": {HUGE},', 1)
    response = client.post("/webhook", data=raw, content_type="application/json")
    assert_client_error(response, 400, "JSON")


@pytest.mark.parametrize("action, body", [
    ("ANNOTATIONS_DELETED", {"annotations": [{"id": 1}, {"id": True}]}),
    ("TASKS_DELETED", {"tasks": [{"id": 2**64}]}),
])
def test_webhook_id_lists_are_bounded(client, db, action, body):
    event = {"action": action, "project": {"id": 1}, **body}
    assert_client_error(post(client, "/webhook", event), 400, "[1].id" if action == "ANNOTATIONS_DELETED" else "[0].id")


def test_tokens_never_logged(client, db, server, caplog):
    caplog.set_level(logging.DEBUG)
    setup = {**example("setup.json"), "access_token": SECRET, "hostname": f"http://{server.netloc}"}
    texts = []
    response = post(client, "/setup", setup)
    assert response.status_code == 200
    texts.append(response.get_data(as_text=True))

    # relative URLs go to /setup's hostname with the token; one of them fails
    body = predict_body(["/img/41.png", "/data/upload/missing.png", server.url("/img/61.png")])
    response = post(client, "/predict", body)
    assert response.status_code == 200, response.get_data(as_text=True)
    texts.append(response.get_data(as_text=True))
    assert [r == [] for r in response.get_json()["results"]] == [False, True, False]
    sent = {path: auth for _, path, auth in server.requests}
    assert sent["/img/41.png"] == f"Token {SECRET}"  # the token was really used ...
    assert sent["/img/61.png"] == f"Token {SECRET}"  # (same origin as /setup's hostname)

    response = post(client, "/predict", predict_body(["/data/upload/missing-too.png"]))
    assert response.status_code == 422
    texts.append(response.get_data(as_text=True))

    for name in ("webhook_ANNOTATION_CREATED.json", "webhook_PROJECT_UPDATED.json", "webhook_START_TRAINING.json"):
        hook = copy.deepcopy(example(name))
        hook["project"]["token"] = SECRET
        response = post(client, "/webhook", hook)
        assert response.status_code == 200
        texts.append(response.get_data(as_text=True))
    bad = copy.deepcopy(example("webhook_ANNOTATION_CREATED.json"))
    bad["project"]["token"] = SECRET
    del bad["task"]
    response = post(client, "/webhook", bad)
    assert response.status_code == 400
    texts.append(response.get_data(as_text=True))

    assert caplog.records  # the run did log something at DEBUG
    assert SECRET not in caplog.text  # ... but never the token
    assert all(SECRET not in text for text in texts)
    # nowhere in Redis either, except the /setup access token the backend must keep to fetch images
    for key in db.scan_iter("*"):
        if key == keys.setup("1"):
            continue
        if key.startswith("rq:"):  # RQ's records (the refresh job /setup queued) hold pickled bytes
            assert SECRET.encode() not in db.execute_command("DUMP", key, NEVER_DECODE=True), key
            continue
        assert SECRET not in json.dumps(redis_value(db, key), default=str), key


def redis_value(db: redis.Redis, key: str):
    kind = db.type(key)
    if kind == "string":
        return db.get(key)
    if kind == "hash":
        return db.hgetall(key)
    if kind == "list":
        return db.lrange(key, 0, -1)
    if kind == "set":
        return sorted(db.smembers(key))
    if kind == "zset":
        return db.zrange(key, 0, -1, withscores=True)
    if kind == "stream":
        return db.xrange(key)
    return kind
