"""Every error answer is JSON with the status that says what went wrong: werkzeug's and Flask's
own (404, 405, 415...), an unhandled exception (500, nothing internal in the body), a client's
path or body that a library chokes on, Redis unreachable (503), cross-site browser requests (403).
Then a real `aesemo serve` (gunicorn) for what only a real server sees: chunked framing, a
chunked body over the limit, and gunicorn's own error pages.

Real pieces only: the session's redis-server (conftest), an embedded redis-server of the test's
own where one is stopped, an image server and gunicorn on 127.0.0.1.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import signal
import socket
from dataclasses import replace

import pytest
import requests
from werkzeug.exceptions import BadRequest, RequestHeaderFieldsTooLarge, UnsupportedMediaType

from backend.http.app import MAX_BODY_BYTES, create_app
from backend.core.redis_connection import ensure_embedded_redis, stop_embedded_redis
from backend.serving.registry import project_versions_dir, set_current_version

from images_server import ImageServer
from training_project import (aesemo_command, example, log_tail, predict_body, service_env, start_process,
                              stop_process, write_small_version)
from net import free_port, wait_for

PROJECT = 7


@pytest.fixture
def app(settings, redis_client):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


def assert_json_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    assert response.mimetype == "application/json", response.get_data(as_text=True)[:300]
    error = response.get_json()["error"]
    for word in words:
        assert word in error, (word, error)
    return response.get_json()


# ----- Flask's and werkzeug's own errors ---------------------------------------------------------

def test_werkzeug_errors_are_json_with_their_headers(settings, redis_client):
    app = create_app(settings)

    @app.get("/test/415")
    def unsupported():
        raise UnsupportedMediaType()

    @app.get("/test/400")
    def bad():
        raise BadRequest("the test's bad request")

    @app.get("/test/431")
    def headers_too_large():
        raise RequestHeaderFieldsTooLarge()

    client = app.test_client()
    assert_json_error(client.get("/test/415"), 415)
    assert_json_error(client.get("/test/400"), 400, "the test's bad request")
    assert_json_error(client.get("/test/431"), 431)
    assert_json_error(client.get("/no/such/endpoint"), 404, "no endpoint GET /no/such/endpoint")
    wrong_method = client.delete("/health")
    assert_json_error(wrong_method, 405, "DELETE is not allowed")
    assert "GET" in wrong_method.headers.get("Allow", ""), wrong_method.headers   # RFC 9110: what is allowed


def test_unhandled_exception_is_json_500_without_internals(settings, redis_client, caplog):
    app = create_app(settings)

    @app.get("/test/boom")
    def boom():
        raise RuntimeError("internal detail /secret/path")

    with caplog.at_level(logging.ERROR, logger="backend.http.app"):
        response = app.test_client().get("/test/boom")
    body = assert_json_error(response, 500, "internal server error")
    assert "secret" not in json.dumps(body)
    logged = "\n".join(r.getMessage() + str(r.exc_info) for r in caplog.records)
    assert "GET /test/boom" in logged and "internal detail" in logged   # the operator learns it


# ----- paths that a library chokes on ------------------------------------------------------------

@pytest.mark.parametrize("job_id", ["%00", "a%20b", "a:b", "x" * 300])
def test_job_ids_rq_cannot_hold_are_404(client, job_id):
    assert_json_error(client.get(f"/projects/{PROJECT}/jobs/{job_id}"), 404, f"project {PROJECT} has no job")
    assert_json_error(client.post(f"/projects/{PROJECT}/jobs/{job_id}/cancel"), 404, "has no job")


@pytest.mark.parametrize("length", [300, 5000])   # over a file name's 255 bytes; over a path's 4096
def test_version_names_longer_than_a_file_name_are_404(client, settings, length):
    project_versions_dir(settings, str(PROJECT)).mkdir(parents=True)
    name = "v" * length
    assert_json_error(client.post(f"/projects/{PROJECT}/versions/{name}/promote"), 404)
    assert_json_error(client.get(f"/projects/{PROJECT}/versions/{name}/report/metrics.json"), 404)


@pytest.mark.parametrize("path", [
    f"/projects/{PROJECT}/versions/%2Fetc/promote",       # %2F: a slash once decoded
    f"/projects/{PROJECT}/versions//etc/promote",
    f"/projects/{PROJECT}//versions",
    "/static//admin.css",
])
def test_paths_with_two_slashes_are_404_json_not_a_redirect(client, path):
    method = client.post if path.endswith("promote") else client.get
    # the test client decodes %2F, as gunicorn does; a path given as PATH_INFO is taken as it is
    response = method(path) if "%" in path else method("/", environ_overrides={"PATH_INFO": path})
    assert_json_error(response, 404, "no endpoint")


def test_the_redirect_from_a_sub_paths_bare_prefix_is_json(client):
    response = client.get("/", environ_overrides={"SCRIPT_NAME": "/aesemo", "PATH_INFO": ""})
    assert response.status_code == 308 and response.headers["Location"].endswith("/aesemo/")
    assert_json_error(response, 308, "moved to")


# ----- credentials and origins a client garbled -----------------------------------------------------

@pytest.mark.parametrize("header", [
    "Basic \xe9\xff\xfe",                         # bytes over 127 (WSGI gives them as latin-1 text)
    "Basic YWRtaW46c2VjcmV0\xe9",
    "Basic " + "\u00ff" * 3,
    "Basic !!!!", "Basic YWRtaW4",                   # no base64
    "Basic " + base64.b64encode(b"\xff\xfe:\xfd").decode(),   # no UTF-8
    "Basic", "Basic ", "Bearer abc", "\xe9", "",
])
def test_a_malformed_basic_header_is_401_json(settings, redis_client, header):
    client = create_app(replace(settings, basic_auth_user="admin", basic_auth_pass="s3cret")).test_client()
    given = {"Authorization": header}
    for response in (client.get("/health", headers=given), client.get(f"/projects/{PROJECT}/jobs", headers=given),
                     client.post("/webhook", json=annotation_event(9), headers=given)):
        assert_json_error(response, 401, "Basic credentials")
        assert response.headers["WWW-Authenticate"].startswith("Basic ")


def test_the_basic_schemes_case_does_not_matter(settings, redis_client):   # RFC 9110 11.1
    client = create_app(replace(settings, basic_auth_user="admin", basic_auth_pass="s3cret")).test_client()
    for scheme in ("basic", "BASIC", "Basic"):
        header = f"{scheme} " + base64.b64encode(b"admin:s3cret").decode()
        assert client.get("/health", headers={"Authorization": header}).status_code == 200, scheme


@pytest.mark.parametrize("origin", ["http://[::1", "http://[evil", "http://a]b"])
def test_an_origin_that_is_no_url_is_refused_as_cross_site(client, origin):
    response = client.post(f"/projects/{PROJECT}/versions/v1/promote", headers={"Origin": origin})
    assert_json_error(response, 403, "cross-site request")


# ----- bodies ------------------------------------------------------------------------------------

def chunked_post(client, path: str, body: bytes):
    """A chunked body as gunicorn passes it on: no Content-Length, its end known to the server
    (`wsgi.input_terminated`)."""
    return client.post(path, input_stream=io.BytesIO(body), content_type="application/json",
                       headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})


def padded_event(size: int) -> bytes:
    """A JSON webhook body of exactly `size` bytes, with an action the service does not know."""
    head, tail = b'{"action": "NO_SUCH_ACTION", "pad": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_chunked_body_over_the_limit_is_413_and_one_at_the_limit_is_read_whole(client):
    at_limit = chunked_post(client, "/webhook", padded_event(MAX_BODY_BYTES))
    assert_json_error(at_limit, 400, "unknown webhook action")   # parsed: not cut short
    assert_json_error(chunked_post(client, "/webhook", padded_event(MAX_BODY_BYTES + 1)), 413, "body over")
    assert_json_error(chunked_post(client, "/predict", padded_event(MAX_BODY_BYTES + 1)), 413, "body over")
    over = client.post("/webhook", data=padded_event(MAX_BODY_BYTES + 1), content_type="application/json")
    assert_json_error(over, 413, "body over")                     # with a Content-Length


# ----- Redis unreachable -------------------------------------------------------------------------

@pytest.fixture
def lost_redis(tmp_path, settings):
    """An app on an embedded Redis of its own, which the test stops."""
    folder = tmp_path / "own-redis"
    url = ensure_embedded_redis(folder)
    mine = replace(settings, redis_url=url)
    app = create_app(mine)
    yield app, folder, mine
    stop_embedded_redis(folder)


def annotation_event(annotation: int = 1) -> dict:
    body = example("webhook_ANNOTATION_CREATED.json")
    body["annotation"]["id"] = annotation
    return body


def test_endpoints_that_need_redis_answer_503_while_it_is_down(lost_redis):
    app, folder, _ = lost_redis
    client = app.test_client()
    assert client.get("/health").get_json()["redis"] == "up"
    assert client.post("/webhook", json=annotation_event(1)).status_code == 200
    stop_embedded_redis(folder)

    assert_json_error(client.post("/webhook", json=annotation_event(2)), 503, "Redis is unreachable")
    stored_config = {**annotation_event(3), "project": {"id": 1}}                  # no label config in the body
    assert_json_error(client.post("/webhook", json=stored_config), 503, "Redis is unreachable")
    chunked = chunked_post(client, "/webhook", json.dumps(annotation_event(4)).encode())
    assert_json_error(chunked, 503, "Redis is unreachable")
    for path in ("/projects/1/consensus", "/projects/1/consensus/tasks?state=agreed", "/projects/1/jobs",
                 "/projects/1/versions"):
        assert_json_error(client.get(path), 503, "Redis is unreachable")
    assert_json_error(client.post("/projects/1/train"), 503, "Redis is unreachable")
    assert_json_error(client.post("/setup", json=example("setup.json")), 503, "Redis is unavailable")


def test_health_says_redis_is_down_and_stays_up(lost_redis):
    """Label Studio marks a backend whose /health is not 200 UP disconnected and skips all its
    predictions, which go on from memory: UP, with what is degraded beside it."""
    app, folder, _ = lost_redis
    client = app.test_client()
    up = client.get("/health")
    assert up.status_code == 200 and up.get_json()["status"] == "UP" and up.get_json()["redis"] == "up"
    assert "degraded" not in up.get_json()
    stop_embedded_redis(folder)
    down = client.get("/health")
    assert down.status_code == 200, down.get_data(as_text=True)
    body = down.get_json()
    assert body["status"] == "UP" and body["redis"] == "down"
    assert "Redis is unreachable" in body["degraded"]


def test_setup_and_predict_go_on_from_memory_while_redis_is_down(lost_redis):
    """Label Studio skips predictions when /setup fails: a project whose model this process holds
    keeps its version through /setup, and /predict answers."""
    app, folder, settings = lost_redis
    with ImageServer("127.0.0.1") as images:
        settings = replace(settings, allowed_image_hosts=(images.netloc,))
        app = create_app(settings)
        client = app.test_client()
        db = app.extensions["aesemo"].redis
        write_small_version(project_versions_dir(settings, str(PROJECT)) / "v0001-held", seed=3)
        set_current_version(db, str(PROJECT), "v0001-held")
        setup = {**example("setup.json"), "project": f"{PROJECT}.1795782039", "hostname": images.url("")}
        assert client.post("/setup", json=setup).get_json() == {"model_version": "v0001-held"}
        body = predict_body(PROJECT, [images.url("/img/1.png")])
        first = client.post("/predict", json=body)
        assert first.status_code == 200, first.get_json()

        stop_embedded_redis(folder)
        assert client.post("/setup", json=setup).get_json() == {"model_version": "v0001-held"}
        second = client.post("/predict", json=body)
        assert second.status_code == 200 and second.get_json() == first.get_json()
        other = {**setup, "project": "8.1795782039"}                      # nothing held for it
        assert_json_error(client.post("/setup", json=other), 503, "holds no model for project 8")


# ----- cross-site browser requests ---------------------------------------------------------------

@pytest.mark.parametrize("headers, refused", [
    ({"Sec-Fetch-Site": "cross-site"}, True),
    ({"Sec-Fetch-Site": "same-site"}, True),                          # another port or subdomain
    ({"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:8081"}, True),
    ({"Sec-Fetch-Site": "same-site", "Origin": "http://localhost"}, False),   # the test client's host
    ({"Sec-Fetch-Site": "same-origin"}, False),
    ({"Sec-Fetch-Site": "none"}, False),                              # typed in by the user
    ({}, False),                                                      # Label Studio, curl
])
def test_sec_fetch_site_refuses_other_sites(client, headers, refused):
    for path in (f"/projects/{PROJECT}/versions/v1/promote", "/webhook"):
        response = client.post(path, data=json.dumps(annotation_event(9)), content_type="application/json",
                               headers=headers)
        if refused:
            assert_json_error(response, 403, "cross-site request")
        else:
            assert response.status_code != 403, (path, headers, response.get_json())
    if refused and "Origin" not in headers:
        assert "Sec-Fetch-Site" in response.get_json()["error"]
    # reading stays open to every page, as before
    assert client.get("/health", headers=headers).status_code == 200


# ----- a real server -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url):
    root = tmp_path_factory.mktemp("errors-serve")
    env = service_env(root / "data", redis_url, "127.0.0.1:9")
    port = free_port()
    process = start_process(aesemo_command("serve", "--host", "127.0.0.1", "--port", str(port),
                                           "--workers", "1", "--threads", "2"), env, root / "serve.log")

    def healthy():
        assert process.poll() is None, log_tail(process)
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        except requests.RequestException:
            return False
    try:
        wait_for(healthy, 300, interval=0.5, what="aesemo serve to answer")
        yield port
    finally:
        stop_process(process, sig=signal.SIGINT)


def raw_exchange(port: int, request: bytes) -> tuple[int, str, bytes]:
    """Sends `request` as it is; the status, Content-Type and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.getheader("Content-Type", ""), response.read()


def chunked_request(chunks: bytes, path: str = "/webhook") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks


@pytest.mark.parametrize("chunks", [
    b"zz\r\n{}\r\n0\r\n\r\n",                   # a chunk size that is not hexadecimal
    b"2\r\n{}XX0\r\n\r\n",                       # a chunk without its CRLF
])
def test_malformed_chunked_framing_is_400_json(served, chunks):
    status, content_type, body = raw_exchange(served, chunked_request(chunks))
    assert (status, content_type) == (400, "application/json"), body[:300]
    assert "chunk" in json.loads(body)["error"].lower()


def test_chunked_body_over_the_limit_is_413_json(served):
    body = padded_event(MAX_BODY_BYTES + 100)
    status, content_type, answer = raw_exchange(served, chunked_request(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)))
    assert (status, content_type) == (413, "application/json"), answer[:300]
    assert "body over" in json.loads(answer)["error"]


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),                                             # no request line
    (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400),                    # an HTTP version it cannot speak
    (b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n", 400),    # a header name with a space
])
def test_requests_the_server_cannot_parse_get_json(served, request_bytes, status):
    got, content_type, body = raw_exchange(served, request_bytes)
    assert (got, content_type) == (status, "application/json"), body[:300]
    assert json.loads(body)["error"]


def test_job_id_with_a_nul_byte_through_gunicorn_is_404_json(served):
    status, content_type, body = raw_exchange(served, b"GET /projects/7/jobs/%00 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                      b"Connection: close\r\n\r\n")
    assert (status, content_type) == (404, "application/json"), body[:300]
    assert "has no job" in json.loads(body)["error"]


def test_a_path_with_an_encoded_slash_through_gunicorn_is_404_json(served):
    request = (b"POST /projects/7/versions/%2Fetc/promote HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
               b"Connection: close\r\n\r\n")
    status, content_type, body = raw_exchange(served, request)
    assert (status, content_type) == (404, "application/json"), body[:300]
    assert "no endpoint" in json.loads(body)["error"]
