"""Consensus at scale, against a real (embedded) Redis, in one run:

    .venv/bin/python benchmarks/consensus.py [--events 3000] [--clients 16] [--tasks 100000]

(a) ANNOTATION_CREATED events ingested per second through /webhook of the real server
    (`aesemo serve --workers 2 --threads 8`), closed loop with --clients keep-alive connections
    of a lean client (--client: socket, http.client or requests; see _server.Poster) (goals:
    >= 500 events/s, p99 < 50 ms). Below a goal, one request path is profiled in process
    (Flask test client, same Redis kind) and what dominates is printed.
(b) consensus of --tasks tasks x 3 annotators (2 aesthetic, 8 emotion classes, noisy
    annotators): backend.votes.consensus.compute with majority vote and with Dawid-Skene, and
    VoteStore.all_votes after writing the records with a pipeline (goals: under 10 s each).
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend.core import keys
from _server import (CLIENTS, Service, closed_loop, cpu_seconds, local_session, percentile,
                     recorded_body, webhook_body)

AESTHETIC = ("high", "low")
EMOTION = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")
PROJECT = "1"  # the recorded bodies' project


def event_bodies(count: int, first_id: int, seed: int) -> list[bytes]:
    """ANNOTATION_CREATED bodies: distinct annotation ids, 3 annotators per task from 30 users."""
    template = recorded_body("webhook_ANNOTATION_CREATED")
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        task = 1 + (first_id + i) // 3
        bodies.append(json.dumps(webhook_body(template, annotation=first_id + i, task=task, user=1 + rng.randrange(30),
                                              aesthetic=rng.choice(AESTHETIC), emotion=rng.choice(EMOTION),
                                              image_url=f"http://127.0.0.1:9/img/{task}.jpg")).encode())
    return bodies


# ----- (a) ingest through the real server --------------------------------------------------------

def ingest(args) -> dict:
    with Service(backbone="resnet18", workers=args.workers, threads=args.threads) as service:
        session = local_session()
        session.post(service.url + "/setup", json=recorded_body("setup"), timeout=30).raise_for_status()
        bodies = event_bodies(args.events + 100, first_id=1, seed=1)
        warm, bodies = bodies[:100], bodies[100:]
        # warm-up: every worker process parses the label config and opens its Redis connections
        warm_out = closed_loop(service.url + "/webhook", warm, args.clients, 60, args.client)
        if warm_out["errors"]:
            raise SystemExit(f"warm-up webhook errors: {warm_out['errors'][:3]}\n{service.log_tail()}")
        cpu_before = service.cpu()
        out = closed_loop(service.url + "/webhook", bodies, args.clients, args.deadline, args.client)
        cpu = {k: v - cpu_before[k] for k, v in service.cpu().items()}
        lat = out["latencies"]
        rate = len(lat) / out["wall"]
        stored = service.redis().hlen(keys.votes(PROJECT))
        print(f"(a) /webhook ingest, aesemo serve --workers {args.workers} --threads {args.threads}, "
              f"{args.clients} client connections (closed loop): {len(lat)} events in {out['wall']:.2f} s = "
              f"{rate:.0f} events/s (goal >= 500/s) | latency p50 {percentile(lat, 50) * 1e3:.1f} ms, "
              f"p99 {percentile(lat, 99) * 1e3:.1f} ms, max {max(lat, default=float('nan')) * 1e3:.1f} ms "
              f"(goal p99 < 50 ms) | errors {len(out['errors'])}"
              + (f" {out['errors'][:3]!r}" if out["errors"] else "")
              + (f" | {out['unfinished']} clients still running at the deadline" if out["unfinished"] else ""))
        print(f"(a) client side (this process, {args.clients} threads, --client {args.client}, keep-alive): "
              f"{out['client_cpu']:.1f} CPU s "
              f"in {out['wall']:.1f} s = {out['client_cpu'] / out['wall']:.2f} of the machine's {os.cpu_count()} "
              f"cores; votes stored in Redis: {stored} (expected {len(warm) + len(lat)})")
        per_event = {"server workers": cpu["workers"] + cpu["master"], "redis-server": cpu["redis"],
                     "client": out["client_cpu"]}
        per_event = {k: v / max(len(lat), 1) * 1e3 for k, v in per_event.items()}
        total = sum(per_event.values())
        print("(a) CPU per event (less load-sensitive than wall time): "
              + ", ".join(f"{k} {v:.2f} ms" for k, v in per_event.items())
              + f" = {total:.2f} ms, so {os.cpu_count()} idle cores could carry at most "
              f"~{os.cpu_count() * 1e3 / total:.0f} events/s with this client, "
              f"~{os.cpu_count() * 1e3 / (total - per_event['client']):.0f}/s with a free client")
        session.close()
        return {"rate": rate, "p99": percentile(lat, 99)}


def profile_webhook(n: int) -> None:
    """One worker's request path in process: Flask test client -> the services -> embedded Redis."""
    with tempfile.TemporaryDirectory(prefix="aesemo-bench-") as tmp:
        metrics_dir = Path(tmp) / "prometheus"  # as under gunicorn: multiprocess metric files
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        from backend.core.redis_connection import ensure_embedded_redis, stop_embedded_redis
        data_dir = Path(tmp) / "data"
        try:
            url = ensure_embedded_redis(data_dir)
            from backend.http.app import create_app
            from backend.core.redis_connection import connect
            from backend.services.process import Services
            from backend.core.settings import Settings
            settings = Settings(data_dir=data_dir, redis_url=url, backbone="resnet18")
            backend = Services(settings, connect(settings))
            commands = [0]
            # counted where every command of the backend is written, through the client or not
            connection_class = backend.redis.connection_pool.connection_class
            send = connection_class.send_packed_command

            def counting(self, *a, **kw):
                commands[0] += 1
                return send(self, *a, **kw)

            connection_class.send_packed_command = counting
            client = create_app(settings, backend).test_client()
            assert client.post("/setup", json=recorded_body("setup")).status_code == 200
            bodies = event_bodies(2 * n + 50, first_id=1, seed=2)
            for b in bodies[:50]:
                assert client.post("/webhook", data=b, content_type="application/json").status_code == 200
            commands[0] = 0
            started, cpu = time.perf_counter(), time.process_time()
            for b in bodies[50:50 + n]:
                client.post("/webhook", data=b, content_type="application/json")
            plain, plain_cpu = (time.perf_counter() - started) / n, (time.process_time() - cpu) / n
            per_event = commands[0] / n
            profiler = cProfile.Profile()
            profiler.enable()
            for b in bodies[50 + n:]:
                client.post("/webhook", data=b, content_type="application/json")
            profiler.disable()
            connection_class.send_packed_command = send
        finally:
            stop_embedded_redis(data_dir)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    print(f"(a) profile: one /webhook in process (Flask test client, no HTTP, one thread): {plain * 1e3:.2f} ms "
          f"wall, {plain_cpu * 1e3:.2f} ms CPU per event; {per_event:.1f} Redis round trips per event")
    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values())  # tottime
    by_area = defaultdict(float)
    for (filename, _, func), (_, _, tottime, _, _) in stats.stats.items():
        by_area[_area(filename, func)] += tottime
    print("(a) profile: own time by area: " + ", ".join(f"{a} {t / total:.0%}" for a, t in
                                                    sorted(by_area.items(), key=lambda x: -x[1])[:9]))
    wanted = ["app.py:webhook", "app.py:json_body", "service.py:webhook", "webhooks.py:parse_event",
              "webhooks.py:record_event", "service.py:project_labels", "project_consensus.py:apply_annotation",
              "project_consensus.py:_agreed_dimensions", "project_consensus.py:policy", "votes.py:apply",
              "votes.py:task_votes", "consensus.py:compute", "app.py:measure"]
    cumulative = {}
    for (filename, _, func), (_, _, _, cum, _) in stats.stats.items():
        name = f"{Path(filename).name}:{func}"
        if "/backend/" in filename and name in wanted:
            cumulative[name] = cumulative.get(name, 0.0) + cum
    print("(a) profile: cumulative share of the request: " + ", ".join(
        f"{name.replace('.py:', '.')} {cumulative[name] / total:.0%}" for name in wanted if name in cumulative))
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]
    print("(a) profile: top own time: " + "; ".join(
        f"{Path(f).name}:{line}({func}) {v[2] / total:.0%} x{v[1] // n}" for (f, line, func), v in top))


def _area(filename: str, func: str) -> str:
    if "/backend/" in filename and "site-packages" not in filename:
        return "backend"
    if "site-packages/" in filename:
        return filename.split("site-packages/")[1].split("/")[0].removesuffix(".py")
    if filename == "~":
        return "builtins:" + ("socket" if "socket" in func or "recv" in func or "send" in func else "other")
    return "stdlib:" + Path(filename).stem


# ----- (b) consensus of a large project ---------------------------------------------------------

def generate_votes(n_tasks: int, per_task: int, seed: int):
    import numpy as np

    from backend.votes.store import Vote
    rng = np.random.default_rng(seed)
    n_annotators = 60
    accuracy = rng.uniform(0.55, 0.95, n_annotators)  # each annotator's chance of the true class
    accuracy[:5] = 1.0 / len(EMOTION)  # a few who click at random
    true_a = rng.integers(0, len(AESTHETIC), n_tasks)
    true_e = rng.integers(0, len(EMOTION), n_tasks)
    votes, annotation = [], 0
    for t in range(n_tasks):
        for a in rng.choice(n_annotators, per_task, replace=False):
            a = int(a)
            aes = true_a[t] if rng.random() < accuracy[a] else rng.integers(0, len(AESTHETIC))
            emo = true_e[t] if rng.random() < accuracy[a] else rng.integers(0, len(EMOTION))
            annotation += 1
            votes.append(Vote(annotation=annotation, task=t + 1, annotator=a + 1,
                              updated_at=f"2026-01-01T00:00:{annotation % 60:02d}Z",
                              labels={"aesthetic": AESTHETIC[aes], "emotion": EMOTION[emo]}))
    return votes, true_a, true_e


def large_project(args) -> None:
    from backend.votes.consensus import Policy, compute
    from backend.core.redis_connection import connect, ensure_embedded_redis, stop_embedded_redis
    from backend.core.settings import Settings
    from backend.votes.store import VoteStore

    started = time.perf_counter()
    votes, true_a, true_e = generate_votes(args.tasks, 3, seed=3)
    print(f"(b) generated {len(votes)} Vote objects ({args.tasks} tasks x 3 of 60 annotators, 5 of them "
          f"random) in {time.perf_counter() - started:.1f} s")
    classes = {"aesthetic": AESTHETIC, "emotion": EMOTION}
    for method in ("majority", "dawid_skene"):
        started, cpu = time.perf_counter(), time.process_time()
        result = compute(votes, classes, Policy(method=method))
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        agreed = {d: sum(c.state == "agreed" for c in result[d].values()) for d in result}
        right = {d: sum(c.state == "agreed" and c.label == names[truth[c.task - 1]] for c in result[d].values())
                 for d, names, truth in (("aesthetic", AESTHETIC, true_a), ("emotion", EMOTION, true_e))}
        del result
        print(f"(b) compute {method:<11}: {took:.2f} s ({cpu:.2f} CPU s) for {args.tasks} tasks x 2 dimensions "
              f"(goal < 10 s) | "
              + ", ".join(f"{d}: {agreed[d]} agreed, {right[d] / max(agreed[d], 1):.1%} of them right"
                          for d in agreed))
        if took > 10:
            _profile_compute(votes[:len(votes) // 10], classes, Policy(method=method), method)

    with tempfile.TemporaryDirectory(prefix="aesemo-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        try:
            settings = Settings(data_dir=data_dir, redis_url=ensure_embedded_redis(data_dir))
            client = connect(settings)
            project = "7"
            redis_pid = int((data_dir / "redis" / "redis.pid").read_text().strip())
            started, cpu, redis_cpu = time.perf_counter(), time.process_time(), cpu_seconds(redis_pid)
            for start in range(0, len(votes), 10_000):
                pipe = client.pipeline(transaction=False)
                for vote in votes[start:start + 10_000]:
                    pipe.hset(keys.votes(project), vote.annotation, vote.record())
                    pipe.hset(keys.vote_times(project), vote.annotation, vote.updated_us)
                    pipe.sadd(keys.task_votes(project, vote.task), vote.annotation)
                pipe.execute()
            wrote, wrote_cpu = time.perf_counter() - started, time.process_time() - cpu
            wrote_redis = cpu_seconds(redis_pid) - redis_cpu
            store = VoteStore(client)
            started, cpu, redis_cpu = time.perf_counter(), time.process_time(), cpu_seconds(redis_pid)
            loaded = store.all_votes(project)
            took, took_cpu = time.perf_counter() - started, time.process_time() - cpu
            took_redis = cpu_seconds(redis_pid) - redis_cpu
            same = len(loaded) == len(votes) and {v.annotation: v for v in loaded} == {v.annotation: v for v in votes}
            print(f"(b) Redis: wrote {len(votes)} vote records (3 commands each, pipelined in batches of 10,000) "
                  f"in {wrote:.2f} s ({wrote_cpu:.2f} CPU s here, {wrote_redis:.2f} in redis-server) | "
                  f"VoteStore.all_votes loaded {len(loaded)} in {took:.2f} s ({took_cpu:.2f} CPU s here, "
                  f"{took_redis:.2f} in redis-server; hiredis parser: {_hiredis()}) (goal < 10 s); identical to "
                  f"what was written: {same}")
        finally:
            stop_embedded_redis(data_dir)


def _profile_compute(votes, classes, policy, method: str) -> None:
    from backend.votes.consensus import compute
    profiler = cProfile.Profile()
    profiler.enable()
    compute(votes, classes, policy)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(v[2] for v in stats.values())
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:6]
    print(f"(b) profile of compute {method} on {len(votes)} votes: top own time: " + "; ".join(
        f"{Path(f).name}:{line}({func}) {v[2] / total:.0%} x{v[1]}" for (f, line, func), v in top))


def _hiredis() -> bool:
    from redis.utils import HIREDIS_AVAILABLE
    return bool(HIREDIS_AVAILABLE)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=180.0, help="seconds the ingest may take at most")
    parser.add_argument("--profile-events", type=int, default=300)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--client", choices=CLIENTS, default="socket",
                        help="the load generator's HTTP client (see _server.Poster; socket is the leanest, so "
                             "that the 2 cores go to the server)")
    parser.add_argument("--skip-large", action="store_true", help="skip (b)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start (other jobs share this "
          f"machine: wall times are noisy, CPU times less so)")
    if not args.skip_ingest:
        got = ingest(args)
        if got["rate"] < 500 or got["p99"] > 0.050:
            profile_webhook(args.profile_events)
    if not args.skip_large:
        large_project(args)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
