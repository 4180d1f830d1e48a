"""Hot swap in a running server: `aesemo serve --workers 2 --threads 4` as a subprocess, 8
client threads calling /predict without pause while versions are promoted back and forth;
a corrupted version published behind promote's back is refused; and /predict keeps answering
from memory when Redis is gone.

Real pieces only: redis-server (the session's, and a second embedded one that this module stops),
an image server on 127.0.0.1, gunicorn. Versions are written straight to disk (no training).
"""
from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from backend.http.app import create_app
from backend.core.redis_connection import connect, ensure_embedded_redis, stop_embedded_redis
from backend.serving.registry import project_versions_dir, set_current_version
from backend.services.process import Services

from training_project import (aesemo_command, flip_a_byte, log_tail, predict_body, service_env, settings_for,
                              start_process, stop_process, write_small_version)
from net import free_port, wait_for

PROJECT = 7
FIRST, SECOND, BAD = "v0001-first", "v0002-second", "v0003-corrupted"


@dataclass
class Served:
    url: str
    process: object
    log: Path
    raw: redis.Redis
    body: dict
    settings: object

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def count(self, line: str) -> int:
        return self.log_text().count(line)


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url, images):
    root = tmp_path_factory.mktemp("hotswap")
    env = service_env(root / "data", redis_url, images.netloc, AESEMO_SWAP_POLL="1")
    settings = settings_for(env)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    raw.flushdb()
    versions = project_versions_dir(settings, str(PROJECT))
    write_small_version(versions / FIRST, seed=1)
    write_small_version(versions / SECOND, seed=2)
    set_current_version(raw, str(PROJECT), FIRST)

    port = free_port()
    log = root / "serve.log"
    process = start_process(aesemo_command("serve", "--host", "127.0.0.1", "--port", str(port),
                                           "--workers", "2", "--threads", "4"), env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                return requests.get(f"{url}/health", timeout=10).status_code == 200
            except requests.RequestException:  # not listening yet, or a worker still importing
                return False
        wait_for(healthy, 300, interval=1.0, what="aesemo serve to answer")
        body = predict_body(PROJECT, [images.url("/img/3.png")])
        server = Served(url, process, log, raw, body, settings)

        # each of the two worker processes loads the current version on its first request
        def both_loaded():
            threads = [threading.Thread(target=lambda: requests.post(f"{url}/predict", json=body, timeout=120))
                       for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return server.count(f"project {PROJECT} now serves model version {FIRST}") >= 2
        wait_for(both_loaded, 240, interval=0.1, what="both worker processes to load the model")
        yield server
    finally:
        stop_process(process, sig=signal.SIGINT)  # gunicorn's quick shutdown
        print(log_tail(process, 2000))
        raw.flushdb()


class Clients:
    """8 threads posting /predict back to back, each on a new connection (so both gunicorn
    worker processes get requests); every answer is recorded with its start time."""

    def __init__(self, served: Served, count: int = 8):
        self.served, self.stop = served, threading.Event()
        self.lock = threading.Lock()
        self.records: list[tuple[float, int, str | None, str | None]] = []  # start, status, version, error
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def _run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                response = requests.post(f"{self.served.url}/predict", json=self.served.body, timeout=60)
                ok = response.status_code == 200
                record = (started, response.status_code, response.json().get("model_version") if ok else None,
                          None if ok else response.text[:300])
            except Exception as exc:  # any failure counts
                record = (started, 0, None, repr(exc))
            with self.lock:
                self.records.append(record)

    def since(self, moment: float) -> list:
        with self.lock:
            return sorted(r for r in self.records if r[0] >= moment)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(90)


def switch_delay(clients: Clients, promoted_at: float, target: str, timeout: float = 30.0) -> float:
    """Seconds from the promotion until every later request got `target`: waits until the last
    12 requests started after the promotion all answered `target`, then takes the start of the
    run of `target` answers that lasts to the end."""
    def settled():
        records = clients.since(promoted_at)
        return len(records) >= 12 and all(r[2] == target for r in records[-12:])
    wait_for(settled, timeout, interval=0.1, what=f"predictions to switch to {target}")
    records = clients.since(promoted_at)
    first = len(records)
    while first > 0 and records[first - 1][2] == target:
        first -= 1
    return records[first][0] - promoted_at


def test_promotions_swap_the_model_of_a_running_server_without_failed_requests(served):
    assert requests.post(f"{served.url}/predict", json=served.body, timeout=60).json()["model_version"] == FIRST
    delays = []
    with Clients(served) as clients:
        wait_for(lambda: len(clients.since(0)) >= 16, 60, what="clients to get going")
        for target in (SECOND, FIRST, SECOND, FIRST, SECOND):
            swaps_before = served.count(f"project {PROJECT} now serves model version {target}")
            asked_at = time.monotonic()
            answer = requests.post(f"{served.url}/projects/{PROJECT}/versions/{target}/promote", timeout=60)
            assert answer.status_code == 200, answer.text
            # the pointer moves at the end of the promote request (after it has loaded the version
            # once to check it): measure from its answer
            promoted_at = time.monotonic()
            delay = switch_delay(clients, promoted_at, target)
            delays.append(delay)
            print(f"promoted {target} (the promote request took {promoted_at - asked_at:.2f} s): "
                  f"every request starting {delay:.2f} s after its answer got {target}")
            # both worker processes swapped (one log line each)
            wait_for(lambda target=target, before=swaps_before:
                     served.count(f"project {PROJECT} now serves model version {target}") >= before + 2,
                     10, what="both processes to log the swap")
            setup = requests.post(f"{served.url}/setup", timeout=60, json={
                "project": f"{PROJECT}.1795782039", "schema": served.body["label_config"]})
            assert setup.json()["model_version"] == target
    records = clients.since(0)
    failed = [r for r in records if r[1] != 200]
    print(f"{len(records)} requests during {len(delays)} promotions, {len(failed)} failed; "
          f"switch delays {[round(d, 2) for d in delays]} s")
    assert not failed, failed[:5]
    assert {r[2] for r in records} == {FIRST, SECOND}


def test_corrupted_version_published_behind_promotes_back_is_refused(served):
    versions = project_versions_dir(served.settings, str(PROJECT))
    write_small_version(versions / BAD, seed=3)
    flip_a_byte(versions / BAD / "weights.safetensors")
    serving = requests.post(f"{served.url}/predict", json=served.body, timeout=60).json()["model_version"]
    assert serving in (FIRST, SECOND)
    refused = f"refused model version {BAD} of project {PROJECT}"

    with Clients(served) as clients:
        wait_for(lambda: len(clients.since(0)) >= 8, 60, what="clients to get going")
        published_at = time.monotonic()
        set_current_version(served.raw, str(PROJECT), BAD)  # no hash check on this path
        wait_for(lambda: served.count(refused) >= 2, 30, what="both processes to refuse the version")
        time.sleep(2.5)  # a couple of polls (AESEMO_SWAP_POLL=1) more: still refused, no retry storm
    records = clients.since(published_at)
    assert records and all(r[1] == 200 for r in records), [r for r in records if r[1] != 200][:5]
    assert {r[2] for r in records} == {serving}
    assert served.count(refused) == 2, served.count(refused)
    line = next(text for text in served.log_text().splitlines() if refused in text)
    assert "sha256" in line and f"still serving {serving}" in line, line
    print(f"{len(records)} requests after the corrupted version was published, all answered by {serving}; "
          f"log: {line.strip()[:200]}")
    # put things right through the checked path
    assert requests.post(f"{served.url}/projects/{PROJECT}/versions/{serving}/promote", timeout=60).status_code == 200
    assert requests.post(f"{served.url}/projects/{PROJECT}/versions/{BAD}/promote", timeout=60).status_code == 409


def test_predict_answers_from_memory_while_redis_is_down(tmp_path, images):
    """The services on their own embedded redis-server, which is stopped between two requests."""
    redis_dir = tmp_path / "own-redis"
    url = ensure_embedded_redis(redis_dir)
    try:
        settings = settings_for(service_env(tmp_path / "data", url, images.netloc))
        client = redis.Redis.from_url(url, decode_responses=True)
        write_small_version(project_versions_dir(settings, "8") / "v0001-memory", seed=8)
        set_current_version(client, "8", "v0001-memory")
        app = create_app(settings, Services(settings, connect(settings)))
        http = app.test_client()
        body = predict_body(8, [images.url("/img/5.png"), images.url("/img/6.png")])
        assert body["label_config"]

        first = http.post("/predict", json=body)
        assert first.status_code == 200, first.get_json()
        assert first.get_json()["model_version"] == "v0001-memory"

        stop_embedded_redis(redis_dir)
        wait_for(lambda: not _answers(client), 10, what="redis-server to stop")
        second = http.post("/predict", json=body)
        assert second.status_code == 200, second.get_json()
        assert second.get_json() == first.get_json()  # the same model, from memory

        # a project this process holds no model for cannot be resolved without Redis: 503, said plainly
        other = http.post("/predict", json=predict_body(9, [images.url("/img/5.png")]))
        assert other.status_code == 503, other.get_json()
        assert "Redis is unavailable" in other.get_json()["error"]
    finally:
        stop_embedded_redis(redis_dir)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, OSError):
        return False


def test_the_exit_hook_stops_every_running_swap_before_the_interpreter_tears_down(settings, redis_client):
    # a daemon swap thread still inside torch or OpenVINO when their libraries are torn down
    # aborts the process at exit (status 134)
    from backend.serving import hotswap
    from backend.serving.models import ModelCache
    swaps = [hotswap.HotSwap(settings, redis_client, ModelCache(10 ** 8, "pytorch")) for _ in range(2)]
    for swap in swaps:
        swap.start()
    threads = [thread for swap in swaps for thread in swap._threads]
    assert all(thread.is_alive() for thread in threads) and set(swaps) <= set(hotswap._RUNNING)
    hotswap.stop_running_swaps()
    assert not any(thread.is_alive() for thread in threads)
    assert not set(swaps) & set(hotswap._RUNNING)
