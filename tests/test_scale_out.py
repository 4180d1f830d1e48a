"""Scale-out end to end: two `aesemo serve` replicas and one `aesemo worker`, each with its own data
directory, sharing one Redis (the session's) and one S3-compatible server (SeaweedFS, tests/
s3_server.py) and no folder. Votes through either replica count once; Start Training on one
replica trains on the worker, which publishes the version to the store before moving the pointer;
both replicas then answer with it, downloaded into their own data directories; a third replica
started afterwards serves it on its first request; and stopping one replica during a /predict
burst fails only requests to it (the client retries the other).

Real pieces only, all on 127.0.0.1: redis-server, `weed mini`, an image server, `aesemo`
subprocesses. The network is small (resnet18 at 40/35 pixels, one epoch).
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from backend.core import keys
from backend.serving.version_store import MANIFEST
from model.version import META_FILE

from ls_examples import example
from net import free_port, wait_for
from training_project import (aesemo_command, label_tasks, log_tail, predict_body, run_burst_worker, service_env,
                              start_process, start_training_body, stop_process)

PROJECT = 4
TASKS = range(1, 15)
SWAP_DEADLINE_S = 60.0  # the pointer's notice is immediate; the poller (1 s here) covers a lost one


class Http:
    """requests with the test client's two methods, so the shared helpers drive a real process."""

    def __init__(self, url: str):
        self.url = url

    def post(self, path: str, json=None, timeout: float = 120):
        response = requests.post(self.url + path, json=json, timeout=timeout)
        response.get_json = response.json
        return response


@dataclass
class Replica:
    name: str
    data_dir: Path
    url: str
    process: object

    def predict(self, body: dict, timeout: float = 120) -> str:
        response = requests.post(f"{self.url}/predict", json=body, timeout=timeout)
        assert response.status_code == 200, (response.status_code, response.text[:500], log_tail(self.process))
        return response.json()["model_version"]


@dataclass
class Cluster:
    root: Path
    env: dict
    raw: redis.Redis
    replicas: dict
    body: dict
    s3: object
    prefix: str

    def start(self, name: str) -> Replica:
        port, data_dir = free_port(), self.root / name
        env = {**self.env, "AESEMO_DATA_DIR": str(data_dir)}
        process = start_process(aesemo_command("serve", "--host", "127.0.0.1", "--port", str(port),
                                               "--workers", "1", "--threads", "4"), env, self.root / f"{name}.log")
        replica = Replica(name, data_dir, f"http://127.0.0.1:{port}", process)
        self.replicas[name] = replica
        return replica

    def wait_healthy(self, replica: Replica) -> None:
        def healthy():
            assert replica.process.poll() is None, log_tail(replica.process)
            try:
                return requests.get(f"{replica.url}/health", timeout=10).status_code == 200
            except requests.RequestException:
                return False
        wait_for(healthy, 300, interval=1.0, what=f"replica {replica.name} to answer")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, redis_url, images, s3_server):
    root = tmp_path_factory.mktemp("scale-out")
    s3_server.empty_bucket()
    prefix = "scale-out"
    env = service_env(root / "unused", redis_url, images.netloc, AESEMO_SWAP_POLL="1",
                      AESEMO_VERSION_STORE=f"s3://{s3_server.bucket}/{prefix}", **s3_server.environment())
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    raw.flushdb()
    body = predict_body(PROJECT, [images.url("/img/3.png")])
    cluster = Cluster(root, env, raw, {}, body, s3_server, prefix)
    try:
        for replica in (cluster.start("replica-a"), cluster.start("replica-b")):
            cluster.wait_healthy(replica)
        yield cluster
    finally:
        for replica in cluster.replicas.values():
            stop_process(replica.process)
        raw.flushdb()


def setup_body() -> dict:
    body = copy.deepcopy(example("setup.json"))
    body.update(project=f"{PROJECT}.1795782039", hostname="http://127.0.0.1:9")
    return body


@pytest.fixture(scope="module")
def trained(cluster, images):
    """Votes through both replicas, Start Training on replica B, a worker with its own data directory."""
    a, b = cluster.replicas["replica-a"], cluster.replicas["replica-b"]
    for replica in (a, b):
        assert Http(replica.url).post("/setup", json=setup_body()).status_code == 200
    urls = {t: images.url(f"/img/{t}.png") for t in TASKS}
    label_tasks(Http(a.url), PROJECT, urls)
    votes_after_a = cluster.raw.hlen(keys.votes(str(PROJECT)))
    label_tasks(Http(b.url), PROJECT, urls)  # the same annotations, delivered to the other replica
    base = {name: replica.predict(cluster.body) for name, replica in (("a", a), ("b", b))}
    answer = Http(b.url).post("/webhook", json=start_training_body(PROJECT))
    assert answer.status_code == 200, answer.text
    worker_env = {**cluster.env, "AESEMO_DATA_DIR": str(cluster.root / "worker")}
    result = run_burst_worker(worker_env, cluster.root / "worker.log")
    assert result.returncode == 0, (cluster.root / "worker.log").read_text()[-4000:]
    version = cluster.raw.get(keys.current_version(str(PROJECT)))
    return {"votes_after_a": votes_after_a, "base": base, "version": version, "answer": answer.json()}


def test_votes_through_either_replica_count_once(cluster, trained):
    assert trained["votes_after_a"] == len(TASKS) * 3
    assert cluster.raw.hlen(keys.votes(str(PROJECT))) == len(TASKS) * 3


def test_training_asked_on_one_replica_runs_on_the_worker_and_publishes_to_the_store(cluster, trained):
    version = trained["version"]
    assert version and version.startswith("v0001-"), (cluster.root / "worker.log").read_text()[-3000:]
    assert (cluster.root / "worker" / "projects" / str(PROJECT) / "versions" / version / META_FILE).is_file()
    listed = cluster.s3.client().list_objects_v2(Bucket=cluster.s3.bucket, Prefix=f"{cluster.prefix}/{PROJECT}/")
    assert f"{cluster.prefix}/{PROJECT}/{version}/{MANIFEST}" in {o["Key"] for o in listed["Contents"]}


def test_both_replicas_serve_the_promoted_version_from_their_own_copy(cluster, trained):
    version = trained["version"]
    for replica in (cluster.replicas["replica-a"], cluster.replicas["replica-b"]):
        wait_for(lambda r=replica: r.predict(cluster.body) == version, SWAP_DEADLINE_S,
                 what=f"{replica.name} to serve {version}")
        assert (replica.data_dir / "projects" / str(PROJECT) / "versions" / version / META_FILE).is_file()


def test_a_replica_started_later_serves_the_current_version_at_once(cluster, trained):
    late = cluster.start("replica-c")
    cluster.wait_healthy(late)
    assert Http(late.url).post("/setup", json=setup_body()).json()["model_version"] == trained["version"]
    assert late.predict(cluster.body) == trained["version"]


def test_replicas_keep_their_metrics_and_control_socket_out_of_the_data_directory(cluster, trained):
    a = cluster.replicas["replica-a"]
    assert requests.get(f"{a.url}/metrics", timeout=30).status_code == 200
    for replica in cluster.replicas.values():
        assert not (replica.data_dir / "prometheus").exists() and not (replica.data_dir / "gunicorn.ctl").exists()


def test_stopping_a_replica_during_a_burst_fails_only_requests_to_it(cluster, trained):
    a, b = cluster.replicas["replica-a"], cluster.replicas["replica-b"]
    version, lock = trained["version"], threading.Lock()
    outcome = {"ok": 0, "retried": 0, "failed_on_b": [], "wrong": []}
    stopped = threading.Event()

    def call(first: Replica, second: Replica) -> None:
        for replica in (first, second):
            try:
                response = requests.post(f"{replica.url}/predict", json=cluster.body, timeout=120)
                if response.status_code == 200:
                    with lock:
                        outcome["ok"] += 1
                        if response.json()["model_version"] != version:
                            outcome["wrong"].append(response.json()["model_version"])
                    return
                failure = f"{response.status_code}"
            except requests.RequestException as exc:
                failure = type(exc).__name__
            with lock:
                if replica is b:
                    outcome["failed_on_b"].append(failure)
                else:
                    outcome["retried"] += 1

    def client(k: int) -> None:
        for i in range(12):
            first, second = (a, b) if (i + k) % 2 == 0 else (b, a)
            call(first, second)
            if k == 0 and i == 3:
                stopped.set()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    assert stopped.wait(300)
    stop_process(a.process)  # SIGTERM: gunicorn's graceful stop
    for thread in threads:
        thread.join(600)
    assert outcome["failed_on_b"] == [] and outcome["wrong"] == []
    assert outcome["ok"] == 4 * 12  # every request answered, by B when A was gone
    assert b.predict(cluster.body) == version
