"""Slow and idle clients against a real `aesemo serve` (gunicorn with the waitress worker of
backend/http/worker.py), as a subprocess on 127.0.0.1, with Basic auth on.

Before that worker, each connection that trickled its headers or body held one of gunicorn's
threads until it finished: a few of them froze `/health`, Label Studio's calls and `/metrics`.
Deadlines here are generous and only bound the waits; nothing asserts a duration.
"""
from __future__ import annotations

import base64
import json
import re
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from backend.http.app import MAX_BODY_BYTES

from hanging_server import HangingServer
from training_project import aesemo_command, example, predict_body, service_env, start_process, stop_process
from net import free_port, wait_for

USER, PASSWORD = "admin", "s3cret-pass"
AUTH = (USER, PASSWORD)
AUTH_HEADER = b"Authorization: Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()) + b"\r\n"
READ_TIMEOUT_S = 20  # long enough to show /health answering while the slow clients are still connected
THREADS = 2


@dataclass
class Served:
    url: str
    port: int
    process: object
    log: Path


def serve(root: Path, redis_url: str, image_hosts: str = "127.0.0.1:9", **env) -> Served:
    env = service_env(root / "data", redis_url, image_hosts, BASIC_AUTH_USER=USER, BASIC_AUTH_PASS=PASSWORD,
                      AESEMO_READ_TIMEOUT=str(READ_TIMEOUT_S), **env)
    port = free_port()
    log = root / "serve.log"
    process = start_process(aesemo_command("serve", "--host", "127.0.0.1", "--port", str(port),
                                           "--workers", "1", "--threads", str(THREADS)), env, log)
    served = Served(f"http://127.0.0.1:{port}", port, process, log)

    def healthy():
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            return requests.get(f"{served.url}/health", auth=AUTH, timeout=10).status_code == 200
        except requests.RequestException:
            return False
    try:
        wait_for(healthy, 300, interval=0.5, what="aesemo serve to answer")
    except BaseException:
        stop_process(process)
        raise
    return served


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url):
    server = serve(tmp_path_factory.mktemp("slow-clients"), redis_url)
    try:
        yield server
    finally:
        stop_process(server.process, sig=signal.SIGINT)


class Tricklers:
    """Connections that each send one byte every `interval_s`, never finishing their request:
    half of them inside the headers, half inside a declared 100 kB body."""

    def __init__(self, port: int, count: int, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.stopped = threading.Event()
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
        for i, sock in enumerate(self.socks):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" if i % 2 == 0 else
                         b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n" + AUTH_HEADER + b"\r\n[")
        self.rounds = 0
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        while not self.stopped.wait(self.interval_s):
            for i, sock in enumerate(self.socks):
                try:
                    sock.send(b"X" if i % 2 == 0 else b" ")
                except OSError:
                    pass  # closed by the server: what test_slow_request_is_cut waits for
            self.rounds += 1

    def open_count(self) -> int:
        return sum(is_open(sock) for sock in self.socks)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(10)
        for sock in self.socks:
            sock.close()


def is_open(sock: socket.socket) -> bool:
    """False once the server has closed it (EOF or reset); True while it just waits."""
    sock.settimeout(None)  # MSG_DONTWAIT answers at once only on a socket without a timeout
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def health_answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", auth=AUTH, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def test_health_answers_while_slow_clients_hold_connections(served):
    tricklers = Tricklers(served.port, count=4 * THREADS)
    try:
        wait_for(lambda: tricklers.rounds >= 2, 30, what="the slow clients to start trickling")
        wait_for(lambda: health_answers(served.url), 60, interval=0.5, what="/health with slow clients connected")
        assert tricklers.open_count() == len(tricklers.socks)  # they were all still connected
        body = json.dumps(example("webhook_ANNOTATION_CREATED.json")).encode()
        response = requests.post(f"{served.url}/webhook", data=body, auth=AUTH, timeout=30,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ok"
    finally:
        tricklers.close()


def test_slow_request_is_cut_after_the_read_timeout(served):
    tricklers = Tricklers(served.port, count=2)
    try:
        wait_for(lambda: tricklers.open_count() == 0, READ_TIMEOUT_S + 60, interval=0.5,
                 what=f"the server to close requests still arriving after AESEMO_READ_TIMEOUT={READ_TIMEOUT_S}")
    finally:
        tricklers.close()
    assert health_answers(served.url)


def test_idle_connection_is_closed(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        wait_for(lambda: not is_open(sock), 60, interval=0.5, what="the server to close an idle connection")


def test_limits_answer_json(served):
    response = requests.get(f"{served.url}/health", auth=AUTH, headers={"X-Big": "a" * 70_000}, timeout=30)
    assert response.status_code == 431
    assert response.json() == {"error": "request headers over 65536 bytes"}
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        # only the declaration: the answer comes before any of the body is read
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n%s\r\n"
                     % (MAX_BODY_BYTES + 1, AUTH_HEADER))
        head, _, rest = read_response(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(rest) == {"error": f"body over {MAX_BODY_BYTES} bytes"}


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_whole_body_over_the_limit_still_gets_its_413(served):
    """A client that sends all of an over-limit body before it reads: the server answers at the
    headers, then reads and drops the rest instead of closing on unread bytes (a reset, which
    would destroy the 413 before the client reads it)."""
    body = memoryview(b"x" * (MAX_BODY_BYTES + 1024 * 1024))
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as sock:
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n%s\r\n" % (len(body), AUTH_HEADER))
        sock.sendall(body)
        head, _, rest = read_response(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert json.loads(rest) == {"error": f"body over {MAX_BODY_BYTES} bytes"}
    assert health_answers(served.url)


def status_lines(answer: bytes) -> list[bytes]:
    """The status lines in what came back (a JSON body ends with a bare LF, right before the next one)."""
    return re.findall(rb"HTTP/1\.[01] \d{3} ", answer)


@pytest.mark.parametrize("head", [
    b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n",
    (b"POST /webhook HTTP/1.0\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n"
     b"Content-Length: 5\r\n"),
])
def test_ambiguous_framing_is_400_and_the_request_hidden_after_it_never_runs(served, head):
    """RFC 9112 6.1: Content-Length beside Transfer-Encoding (or Transfer-Encoding in HTTP/1.0)
    is how a request is smuggled past a proxy that frames the body the other way. The hidden
    request here would be answered too; only the refusal comes, then the end of the connection."""
    smuggled = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH_HEADER + b"Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(head + AUTH_HEADER + b"\r\n0\r\n\r\n" + smuggled)
        answer = read_response(sock)  # up to the server's end of the connection
    assert len(status_lines(answer)) == 1, answer[:2000]
    response_head, _, body = answer.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", response_head), response_head
    assert b"\r\nX-Content-Type-Options: nosniff" in response_head
    assert "Transfer-Encoding" in json.loads(body)["error"]


def test_a_path_cannot_write_a_line_of_its_own_into_the_access_log(served):
    forged = '127.0.0.1 "GET /admin-forged" 200 0 1ms'
    path = "/x%0a" + forged.replace(" ", "%20").replace('"', "%22") + "%0d%1b%e2%80%a8%ff%5Cn"
    assert requests.get(f"{served.url}{path}", auth=AUTH, timeout=30).status_code == 404

    def logged():
        lines = served.log.read_text(errors="replace").splitlines()
        return [line for line in lines if "admin-forged" in line and " 404 " in line]
    mine = wait_for(logged, 30, what="the access log line of the forged path")
    assert len(mine) == 1, mine
    escaped = '/x\\n127.0.0.1 \\"GET /admin-forged\\" 200 0 1ms\\r\\x1b\\u2028\\xff\\\\n'
    assert mine[0].startswith(f'127.0.0.1 "GET {escaped}" 404 '), mine[0]
    assert not [line for line in served.log.read_text(errors="replace").splitlines()
                if line.startswith('127.0.0.1 "GET /admin-forged"')]


def test_an_authorization_header_of_any_bytes_is_401_json(served):
    for value in (b"Basic \xff\xfe\xe9", b"Basic YWRtaW46\xc3\xa9", b"\xe9\xe9", b"Basic =", b"Basic"):
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\nConnection: close\r\n\r\n"
                         % value)
            head, _, body = read_response(sock).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 "), (value, head)
        assert "Basic credentials" in json.loads(body)["error"]


def test_auth_access_log_and_metrics(served):
    refused = requests.get(f"{served.url}/health", timeout=30)
    assert refused.status_code == 401
    assert "Basic" in refused.json()["error"]
    assert requests.get(f"{served.url}/health?token=query-secret-1", auth=AUTH, timeout=30).status_code == 200
    metrics = requests.get(f"{served.url}/metrics", auth=AUTH, timeout=30)
    assert metrics.status_code == 200
    assert 'aesemo_requests_total{endpoint="/health",method="GET",status="200"}' in metrics.text

    def logged():
        text = served.log.read_text(errors="replace")
        return '127.0.0.1 "GET /health" 200 ' in text and '"GET /metrics" 200' in text and text
    text = wait_for(logged, 30, what="the access log lines")
    assert "query-secret-1" not in text
    assert PASSWORD not in text


def test_graceful_stop_finishes_the_request_in_flight(tmp_path, redis_url):
    with HangingServer("127.0.0.1") as hanging:
        server = serve(tmp_path, redis_url, image_hosts=hanging.netloc, AESEMO_IMAGE_TIMEOUT="600")
        answer: dict = {}

        def predict():
            body = predict_body(3, [hanging.url("/a.png")])
            answer["response"] = requests.post(f"{server.url}/predict", json=body, auth=AUTH, timeout=300)

        thread = threading.Thread(target=predict, daemon=True)
        try:
            thread.start()
            wait_for(lambda: hanging.holding() == 1, 300, what="the /predict to wait on its image")
            server.process.send_signal(signal.SIGTERM)  # the master: it stops listening, then stops the worker

            def refused():
                try:
                    socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
                    return False
                except OSError:
                    return True
            wait_for(refused, 60, what="gunicorn to stop listening")
            wait_for(lambda: "graceful stop: 1 request(s) in flight" in server.log.read_text(), 60,
                     what="the worker to start its graceful stop")
            assert thread.is_alive()
            hanging.release()  # the image fails now, and the request can finish
            thread.join(120)
            assert server.process.wait(120) == 0
        finally:
            stop_process(server.process)
    response = answer["response"]
    assert response.status_code == 422, response.text  # its only image failed: answered, not cut off
    assert response.json()["errors"][0]["kind"] == "connection"
