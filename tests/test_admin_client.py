"""The admin client (backend/labelstudio/admin_client.py) against loopback fakes: where its token
and Label Studio's session cookie go, how a refusal reads, and that nothing is sent twice. The
calls themselves are checked against a real Label Studio in tests/e2e."""
from __future__ import annotations

import threading

import pytest
from json_server import JsonHandler, LoopbackServer
from net import free_port

from backend.labelstudio.admin_client import LabelStudioClient, LabelStudioError

TOKEN = "admin-legacy-token"
SESSION = "sessionid=secret-session-of-the-admin"


class Recording:
    """A loopback server that records (method, path, Authorization, Cookie) and answers `status`,
    setting Label Studio's session cookie the way Label Studio does on token-authenticated calls."""

    def __init__(self, status: int = 200):
        self.status = status
        self.seen: list[tuple[str, str, str | None, str | None]] = []
        lock = threading.Lock()
        recording = self

        class Handler(JsonHandler):
            def reply(self):
                with lock:
                    recording.seen.append((self.command, self.path, self.headers.get("Authorization"),
                                           self.headers.get("Cookie")))
                body = b"png"
                self.send_response(recording.status)
                self.send_header("Set-Cookie", f"{SESSION}; Path=/; HttpOnly")
                if self.path.startswith("/api/"):
                    body = b'{"id": 7, "email": "admin@example.com", "detail": "as Label Studio says"}'
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = reply

        self.server = LoopbackServer(Handler)
        self.url = self.server.url

    def close(self):
        self.server.close()


@pytest.fixture
def label_studio():
    server = Recording()
    yield server
    server.close()


@pytest.fixture
def elsewhere():
    server = Recording()  # the same host on another port: cookies do not tell ports apart
    yield server
    server.close()


def test_a_download_elsewhere_carries_neither_the_token_nor_the_session_cookie(label_studio, elsewhere):
    client = LabelStudioClient(label_studio.url, TOKEN)
    assert client.whoami()["id"] == 7  # the SDK client now holds Label Studio's session cookie
    assert client.download("/data/upload/1/a.png").content == b"png"
    assert client.download(f"{elsewhere.url}/image.png").content == b"png"  # e.g. a task's image URL
    assert [auth for _, _, auth, _ in label_studio.seen] == [f"Token {TOKEN}"] * 2
    assert elsewhere.seen == [("GET", "/image.png", None, None)]


def test_a_refusal_is_a_label_studio_error_with_status_and_body_but_no_headers(label_studio):
    label_studio.status = 404
    client = LabelStudioClient(label_studio.url, TOKEN)
    with pytest.raises(LabelStudioError) as err:
        client.project(5)
    assert err.value.status == 404 and "as Label Studio says" in err.value.body
    # the SDK's error spells out the reply's headers, Set-Cookie among them: not in the message or chain
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert "secret-session" not in str(err.value)


def test_a_call_label_studio_failed_is_not_sent_again(label_studio):
    label_studio.status = 503  # an import or an annotation may be stored even so
    client = LabelStudioClient(label_studio.url, TOKEN)
    with pytest.raises(LabelStudioError) as err:
        client.import_tasks(1, [{"image": "/data/upload/1/a.png"}])
    assert err.value.status == 503
    assert [(method, path) for method, path, _, _ in label_studio.seen] == [("POST", "/api/projects/1/import")]


def test_a_connection_that_fails_is_a_label_studio_error():
    with pytest.raises(LabelStudioError) as err:
        LabelStudioClient(f"http://127.0.0.1:{free_port()}", TOKEN, request_timeout=5).users()
    assert err.value.status is None and "users()" in str(err.value)
