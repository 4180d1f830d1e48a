"""Proves the Label Studio harness works against the real server: projects, file upload, image
download, a second annotator, and the ML-backend round trip (with a recording fake backend)."""

from __future__ import annotations

import base64
import io
import threading
import uuid

import pytest
import requests
from PIL import Image

from json_server import JsonHandler, LoopbackServer
from ls_server import LabelStudioError, LabelStudioServer

LABEL_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <Choices name="aesthetic" toName="image" choice="single" showInLine="true">
    <Choice value="high"/><Choice value="low"/>
  </Choices>
  <Choices name="emotion" toName="image" choice="single">
    <Choice value="amusement"/><Choice value="awe"/><Choice value="contentment"/><Choice value="excitement"/>
    <Choice value="anger"/><Choice value="disgust"/><Choice value="fear"/><Choice value="sadness"/>
  </Choices>
</View>
"""

RESULT = [
    {"from_name": "aesthetic", "to_name": "image", "type": "choices", "value": {"choices": ["high"]}},
    {"from_name": "emotion", "to_name": "image", "type": "choices", "value": {"choices": ["awe"]}},
]


class RecordingBackend:
    """A fake ML backend on 127.0.0.1 that records every request LS sends it."""

    def __init__(self, model_version: str = "rec-v1", basic_auth: tuple[str, str] | None = None):
        self.model_version = model_version
        self.calls: list[dict] = []  # {"method", "path", "headers", "body"}
        self._lock = threading.Lock()
        expected_auth = (
            "Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode() if basic_auth else None
        )
        recorder = self

        class Handler(JsonHandler):
            def _record(self, body) -> bool:
                with recorder._lock:
                    recorder.calls.append(
                        {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                    )
                if expected_auth and self.headers.get("Authorization") != expected_auth:
                    self.answer(401, {"error": "unauthorized"})
                    return False
                return True

            def do_GET(self):
                if not self._record(None):
                    return
                if self.path.rstrip("/") == "/health":
                    self.answer(200, {"status": "UP", "model_class": "RecordingBackend"})
                else:
                    self.answer(404, {"error": "not found"})

            def do_POST(self):
                body = self.json_body()
                if not self._record(body):
                    return
                path = self.path.rstrip("/")
                if path == "/setup":
                    self.answer(200, {"model_version": recorder.model_version})
                elif path == "/predict":
                    results = [
                        {"model_version": recorder.model_version, "score": 0.5,
                         "result": [dict(r, score=0.5) for r in RESULT]}
                        for _ in body["tasks"]
                    ]  # fmt: skip
                    self.answer(200, {"results": results})
                elif path == "/webhook":
                    self.answer(200, {"status": "ok"})
                else:
                    self.answer(404, {"error": "not found"})

        self.server = LoopbackServer(Handler)
        self.url = self.server.url

    def bodies(self, path: str) -> list:
        with self._lock:
            return [c["body"] for c in self.calls if c["path"].rstrip("/") == path]

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def recorder():
    rec = RecordingBackend()
    yield rec
    rec.close()


def make_pngs(tmp_path, n: int = 2) -> list:
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (32, 24), (40 * i, 200 - 40 * i, 90)).save(p)
        paths.append(p)
    return paths


def upload_project(ls: LabelStudioServer, tmp_path, title: str) -> tuple[int, list[dict]]:
    project = ls.create_project(title, LABEL_CONFIG)
    reply = ls.import_files(project["id"], make_pngs(tmp_path))
    assert reply["task_count"] == 2, reply
    assert len(reply["file_upload_ids"]) == 2, reply
    return project["id"], ls.tasks(project["id"])


def test_upload_download_and_second_annotator(label_studio: LabelStudioServer, tmp_path):
    ls = label_studio
    pid, tasks = upload_project(ls, tmp_path, "harness: upload")

    assert len(tasks) == 2
    for t in tasks:
        assert t["data"]["image"].startswith(f"/data/upload/{pid}/"), t["data"]
        assert t["data"]["image"].endswith(".png")

    image = ls.download(tasks[0]["data"]["image"])
    assert image.status_code == 200
    assert image.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (32, 24)
    # ...and the same URL without the token is refused
    assert requests.get(ls.url + tasks[0]["data"]["image"], timeout=10).status_code == 401

    admin = ls.whoami()
    email = f"annotator-{uuid.uuid4().hex[:8]}@example.com"
    token2 = ls.signup_user(email, "An0ther-long-passw0rd")
    assert token2 and token2 != ls.token
    annotator = ls.whoami(token=token2)
    assert annotator["email"] == email
    assert annotator["id"] != admin["id"]

    ann = ls.create_annotation(tasks[0]["id"], RESULT, token=token2, lead_time=2.5)
    assert ann["completed_by"] == annotator["id"] != admin["id"]
    assert ann["task"] == tasks[0]["id"]
    assert [r["value"]["choices"] for r in ann["result"]] == [["high"], ["awe"]]
    own = ls.create_annotation(tasks[0]["id"], RESULT)
    assert own["completed_by"] == admin["id"]
    assert sorted(a["completed_by"] for a in ls.annotations(tasks[0]["id"])) == sorted([admin["id"], annotator["id"]])

    with pytest.raises(LabelStudioError) as err:
        ls.project(999999)
    assert err.value.status == 404


def test_ml_backend_round_trip(label_studio: LabelStudioServer, recorder: RecordingBackend, tmp_path):
    ls = label_studio
    pid, tasks = upload_project(ls, tmp_path, "harness: ml backend")
    ids = [t["id"] for t in tasks]

    ml = ls.connect_ml_backend(pid, recorder.url, title="recorder")
    assert ml["url"] == recorder.url and ml["project"] == pid
    setup = recorder.bodies("/setup")
    assert setup, recorder.calls
    assert setup[-1]["access_token"] == ls.token
    assert setup[-1]["hostname"] == ls.url
    assert recorder.bodies("/health")
    assert [w["url"] for w in ls.webhooks(pid)] == [recorder.url + "/webhook"]

    ls.retrieve_predictions(pid, ids)
    predicted = [t["id"] for body in recorder.bodies("/predict") for t in body["tasks"]]
    assert sorted(predicted) == sorted(ids)
    for tid in ids:
        preds = ls.predictions(tid)
        assert len(preds) == 1, preds
        assert preds[0]["model_version"] == "rec-v1"
        assert preds[0]["score"] == pytest.approx(0.5)
        assert [r["from_name"] for r in preds[0]["result"]] == ["aesthetic", "emotion"]

    # The auto-created webhook delivers annotation events synchronously.
    ls.create_annotation(ids[0], RESULT)
    events = [b["action"] for b in recorder.bodies("/webhook")]
    assert "ANNOTATION_CREATED" in events, events


def test_ml_backend_basic_auth(label_studio: LabelStudioServer):
    ls = label_studio
    rec = RecordingBackend(basic_auth=("lsuser", "s3cret"))
    try:
        pid = ls.create_project("harness: basic auth", LABEL_CONFIG)["id"]
        with pytest.raises(LabelStudioError) as err:
            ls.connect_ml_backend(pid, rec.url)  # no credentials: the backend's /health says 401
        assert err.value.status == 400
        ml = ls.connect_ml_backend(pid, rec.url, basic_auth=("lsuser", "s3cret"))
        assert ml["auth_method"] == "BASIC_AUTH"
        assert ml["basic_auth_user"] == "lsuser"
        assert "basic_auth_pass" not in ml and ml["basic_auth_pass_is_set"] is True
        authorized = [c for c in rec.calls if c["headers"].get("Authorization", "").startswith("Basic ")]
        assert {c["path"].rstrip("/") for c in authorized} >= {"/health", "/setup"}
    finally:
        rec.close()
