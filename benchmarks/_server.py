"""The real service for the HTTP benchmarks: `aesemo serve` as a subprocess on 127.0.0.1, the
recorded Label Studio bodies, an in-memory image server, load generators (closed and paced open
loop) and percentiles.

Everything here talks to 127.0.0.1 only, and every loop is bounded in count and in time.
"""
from __future__ import annotations

import copy
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = Path(os.environ.get("AESEMO_LS_EXAMPLES") or
                Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "label-studio-examples")
# Settings of the calling environment that must not reach the server under test.
SCRUB_ENV = ("REDIS_URL", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER", "BASIC_AUTH_PASS",
             "PROMETHEUS_MULTIPROC_DIR", "PYTHONSTARTUP")


def recorded_body(name: str) -> dict:
    """The request body Label Studio sent, from a recorded example (e.g. "setup")."""
    return json.loads((EXAMPLES / f"{name}.json").read_text())["request"]["body"]


class ImageServer:
    """GET <path> from memory on 127.0.0.1, each answer after `latency_s`; counts the hits."""

    def __init__(self, files: dict[str, tuple[bytes, str]], latency_s: float = 0.0):
        self.files, self.latency_s, self.hits = files, latency_s, 0
        lock, server = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with lock:
                    server.hits += 1
                if server.latency_s:
                    time.sleep(server.latency_s)
                data, kind = server.files.get(self.path, (b"not found", "text/plain"))
                self.send_response(200 if self.path in server.files else 404)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.host = self.url.removeprefix("http://")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class HangingServer:
    """An image host on 127.0.0.1 that accepts connections and never answers; `holding()` counts
    the connections it keeps, and close() drops them all."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.host = self.url.removeprefix("http://")
        self.lock, self.held = threading.Lock(), []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            with self.lock:
                self.held.append(conn)

    def holding(self) -> int:
        with self.lock:
            return len(self.held)

    def close(self) -> None:
        # shutdown, not just close: a listener closed while accept() waits on it stays listening
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            held, self.held = self.held, []
        for conn in held:
            conn.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc); 0.0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def aesemo_executable() -> str:
    for candidate in (Path(sys.executable).parent / "aesemo", ROOT / ".venv" / "bin" / "aesemo"):
        if candidate.is_file():
            return str(candidate)
    raise SystemExit("no aesemo executable: run with .venv/bin/python after `pip install -e .`")


def local_session() -> requests.Session:
    """A session that ignores proxy variables, so requests to 127.0.0.1 stay on 127.0.0.1."""
    session = requests.Session()
    session.trust_env = False
    return session


class Service:
    """`aesemo serve` on 127.0.0.1:<free port> with its own temporary data directory (and so its
    own embedded Redis). Use as a context manager: the server and its Redis stop on exit, errors
    included."""

    def __init__(self, backbone: str = "resnet18", workers: int = 1, threads: int = 8,
                 allowed_image_hosts: str = "", start_timeout_s: float = 240.0,
                 extra_env: dict[str, str] | None = None):
        self.backbone, self.workers, self.threads = backbone, workers, threads
        self.extra_env = dict(extra_env or {})  # further settings for the server (e.g. AESEMO_SWAP_POLL)
        self.allowed_image_hosts = allowed_image_hosts
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="aesemo-bench-")
        self.data_dir = Path(self._tmp.name) / "data"
        self.log_path = Path(self._tmp.name) / "serve.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Service:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV and not k.startswith("AESEMO_")}
        env.update(AESEMO_BACKBONE=self.backbone, AESEMO_DATA_DIR=str(self.data_dir), PYTHONUNBUFFERED="1",
                   AESEMO_OFFLINE="1",  # a benchmark measures the server, never a download
                   AESEMO_SUGGEST_UNTRAINED="1",  # it measures predictions, which a generated model
                                                  # (never trained on labels) would otherwise withhold
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        if self.allowed_image_hosts:
            env["AESEMO_ALLOWED_IMAGE_HOSTS"] = self.allowed_image_hosts
        env.update(self.extra_env)
        cmd = [aesemo_executable(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", str(self.workers), "--threads", str(self.threads)]
        self.data_dir.mkdir(parents=True, exist_ok=True)  # kept by `restart`
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self._tmp.name, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        session = local_session()
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"aesemo serve exited with code {self.proc.returncode}\n{self.log_tail()}")
                try:
                    if session.get(self.url + "/health", timeout=2).status_code == 200:
                        return
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"aesemo serve not healthy after {self.start_timeout_s:.0f} s\n"
                                       f"{self.log_tail()}")
                time.sleep(0.2)
        finally:
            session.close()

    def restart(self, extra_env: dict[str, str]) -> None:
        """The server again with other settings, on the same data directory and Redis."""
        self._stop_server()
        self.extra_env.update(extra_env)
        self.start()

    def stop(self) -> None:
        from backend.core.redis_connection import stop_embedded_redis

        self._stop_server()
        if self.data_dir.exists():
            stop_embedded_redis(self.data_dir)  # a daemon, outside the process group
        self._tmp.cleanup()

    def _stop_server(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()  # gunicorn: graceful stop of the master and its workers
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    pass
            try:  # whatever is left in the group this script started (workers of a stuck master)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(timeout=10)

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the gunicorn master, its workers, and the embedded Redis."""
        out = {"master": 0.0, "workers": 0.0, "redis": 0.0}
        if self.proc is not None:
            out["master"] = cpu_seconds(self.proc.pid)
            out["workers"] = sum(cpu_seconds(p) for p in child_pids(self.proc.pid))
        try:
            out["redis"] = cpu_seconds(int((self.data_dir / "redis" / "redis.pid").read_text().strip()))
        except (OSError, ValueError):
            pass
        return out

    def redis(self):
        import redis

        from backend.core.redis_connection import embedded_socket_path
        return redis.Redis.from_url(f"unix://{embedded_socket_path(self.data_dir)}", decode_responses=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        return "--- serve.log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


def webhook_body(template: dict, annotation: int, task: int, user: int, aesthetic: str, emotion: str,
                 image_url: str | None = None) -> dict:
    """The recorded ANNOTATION_CREATED body with another annotation id, task, author and choices."""
    body = copy.deepcopy(template)
    a = body["annotation"]
    stamp = f"2026-11-27T12:{(annotation // 60) % 60:02d}:{annotation % 60:02d}.{annotation % 1_000_000:06d}Z"
    a.update(id=annotation, task=task, completed_by=user, updated_by=user, created_at=stamp, updated_at=stamp,
             unique_id=f"bench-{annotation}")
    for region in a["result"]:
        region["value"]["choices"] = [aesthetic if region["from_name"] == "aesthetic" else emotion]
    body["task"]["id"] = task
    body["task"]["inner_id"] = task
    if image_url:
        body["task"]["data"]["image"] = image_url
    return body


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


CLIENTS = ("socket", "http.client", "requests")


class Poster:
    """POSTs JSON bodies to one URL over one keep-alive HTTP/1.1 connection. The load generator
    shares the machine's CPU with the server, so the leaner the client, the more of it measures
    the server: "socket" writes each request with one sendall and reads the answer by its
    Content-Length (enough for this server, which always sends one; anything else is an error);
    "http.client" is the standard library's HTTPConnection; "requests" a Session, as Label
    Studio's own client is. post() returns (status, body text for anything but 200); it raises
    OSError, http.client.HTTPException or requests.RequestException when no answer came."""

    def __init__(self, url: str, kind: str = "socket", timeout_s: float = 10.0):
        if kind not in CLIENTS:
            raise ValueError(f"client must be one of {CLIENTS}, got {kind!r}")
        self.url, self.kind, self.timeout_s = url, kind, timeout_s
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port, parts.path or "/"
        self.session = local_session() if kind == "requests" else None
        self.conn, self.used = None, False

    def post(self, body: bytes) -> tuple[int, str]:
        if self.session is not None:
            r = self.session.post(self.url, data=body, headers={"Content-Type": "application/json"},
                                  timeout=self.timeout_s)
            return r.status_code, "" if r.status_code == 200 else r.text
        reused = self.used
        try:
            return self._post(body)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            return self._post(body)  # the server closed an idle keep-alive connection: once more, on a new one

    def _post(self, body: bytes) -> tuple[int, str]:
        if self.kind == "socket":
            return self._post_socket(body)
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            self.conn.request("POST", self.path, body, {"Content-Type": "application/json"})
            r = self.conn.getresponse()
            data = r.read()
        except BaseException:
            self.close()
            raise
        self.used = True
        if r.will_close:
            self.close()
        return r.status, "" if r.status == 200 else data.decode(errors="replace")

    def _post_socket(self, body: bytes) -> tuple[int, str]:
        if self.conn is None:
            self.conn = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: ").encode()
            self.pending = b""
        try:
            self.conn.sendall(b"%s%d\r\n\r\n%s" % (self.head, len(body), body))
            data = self.pending
            while b"\r\n\r\n" not in data:
                data += self._recv()
            head, _, data = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(fields["content-length"])  # KeyError: no Content-Length, not for this client
            while len(data) < length:
                data += self._recv()
            answer, self.pending = data[:length], data[length:]
        except (KeyError, ValueError, IndexError) as exc:
            self.close()
            raise http.client.HTTPException(f"unexpected answer: {exc!r}") from None
        except BaseException:
            self.close()
            raise
        self.used = True
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, "" if status == 200 else answer.decode(errors="replace")

    def _recv(self) -> bytes:
        chunk = self.conn.recv(65536)
        if not chunk:
            raise http.client.RemoteDisconnected("the server closed the connection")
        return chunk

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn, self.used = None, False
        if self.session is not None:
            self.session.close()


_NO_ANSWER = (OSError, http.client.HTTPException, requests.RequestException)


def _post_ok(poster, body: bytes, errors: list) -> bool:
    """POSTs one body; False, with the reason added to `errors`, unless it answered 200."""
    try:
        status, text = poster.post(body)
    except _NO_ANSWER as exc:
        errors.append(type(exc).__name__)
        return False
    if status != 200:
        errors.append(f"{status} {text[:200]}")
    return status == 200


def closed_loop(url: str, bodies: list[bytes], concurrency: int, deadline_s: float,
                client: str = "socket") -> dict:
    """POST every body, `concurrency` connections each sending its next one as soon as the last
    answered. Latencies in seconds."""
    lock, cursor = threading.Lock(), iter(range(len(bodies)))
    latencies, errors = [], []
    stop_at = time.monotonic() + deadline_s

    def sender():
        poster = Poster(url, client)
        try:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                started = time.perf_counter()
                if _post_ok(poster, bodies[i], errors):
                    latencies.append(time.perf_counter() - started)
        finally:
            poster.close()

    cpu0, t0 = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=sender, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, stop_at - time.monotonic() + 15))
    wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "wall": wall, "client_cpu": time.process_time() - cpu0,
            "unfinished": sum(t.is_alive() for t in threads)}


def paced_open_loop(url: str, bodies: list[bytes], rate: float, threads: int, deadline_s: float,
                    client: str = "socket") -> dict:
    """Request i is due at start + i / rate whatever happened before (open loop); `threads`
    senders take the next due request. A request's latency runs from its due time to its answer,
    so time spent waiting for a free sender (queueing) counts."""
    lock, cursor = threading.Lock(), iter(range(len(bodies)))
    latencies, service, late, errors = [], [], [], []
    start = time.perf_counter() + 0.05
    stop_at = time.monotonic() + deadline_s
    done_at = [start]
    cpu0 = time.process_time()

    def sender():
        poster = Poster(url, client)
        try:
            paced(poster)
        finally:
            poster.close()

    def paced(poster):
        while time.monotonic() < stop_at:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sent = time.perf_counter()
            ok = _post_ok(poster, bodies[i], errors)
            finished = time.perf_counter()
            done_at.append(finished)
            if ok:
                latencies.append(finished - due)
                service.append(finished - sent)
                late.append(max(0.0, sent - due))

    pool = [threading.Thread(target=sender, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=max(1.0, stop_at - time.monotonic() + 15))
    return {"latencies": latencies, "service": service, "late": late, "errors": errors,
            "elapsed": max(done_at) - start, "sent": len(latencies) + len(errors),
            "client_cpu": time.process_time() - cpu0,
            "unfinished": sum(t.is_alive() for t in pool)}
