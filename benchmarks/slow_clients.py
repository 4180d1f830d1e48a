"""Slow clients and hanging image hosts against the real service (`aesemo serve`, 1 worker x 4
threads, its defaults), in one run:

    .venv/bin/python benchmarks/slow_clients.py [--slow 50] [--hanging 32] [--rounds 5]

/health p99 and one-image /predict latency (images from a loopback image server), measured
(a) quiet, (b) while --slow connections trickle a byte every 2 s (half inside their headers,
half inside a declared 100 kB body), (c) while a concurrent /predict waits on --hanging image URLs
of a loopback host that accepts and never answers. Goal: p99 within 2x of the quiet run. The
three phases run in turns, --rounds times, and each phase's numbers are pooled over the rounds.

Everything is on 127.0.0.1; each phase of a round stops after --phase-seconds whatever happened,
and every request has a timeout (one that timed out counts as an error, at that timeout's latency).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import HangingServer, ImageServer, Service, local_session, percentile, recorded_body
from serve import photo_jpeg, predict_body

REQUEST_TIMEOUT_S = 5.0


class SlowClients:
    """`count` connections, each sending one byte every `interval_s` and never finishing."""

    def __init__(self, port: int, count: int, interval_s: float = 2.0, body_bytes: int = 100_000):
        self.stopped = threading.Event()
        self.socks = []
        for i in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" if i % 2 == 0 else
                         b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n[" % body_bytes)
            self.socks.append(sock)
        self.thread = threading.Thread(target=self._trickle, args=(interval_s,), daemon=True)
        self.thread.start()

    def _trickle(self, interval_s: float) -> None:
        while not self.stopped.wait(interval_s):
            for i, sock in enumerate(self.socks):
                try:
                    sock.send(b"X" if i % 2 == 0 else b" ")
                except OSError:
                    pass

    def still_open(self) -> int:
        """Connections the server has not closed (nor answered)."""
        count = 0
        for sock in self.socks:
            sock.setblocking(False)
            try:
                count += sock.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                count += 1
            except OSError:
                pass
        return count

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(10)
        for sock in self.socks:
            sock.close()


def timed(call) -> tuple[float, bool]:
    started = time.perf_counter()
    try:
        ok = call().status_code == 200
    except Exception:  # a timeout, a reset: counted as an error at the timeout's latency
        ok = False
    return time.perf_counter() - started, ok


def measure(service: Service, predict: bytes, health: int, predicts: int, stop_at: float, into: dict) -> None:
    """/health sequentially, then one-image /predicts sequentially, until `stop_at` at the latest."""
    session = local_session()
    for _ in range(health):
        if time.monotonic() > stop_at:
            break
        seconds, ok = timed(lambda: session.get(service.url + "/health", timeout=REQUEST_TIMEOUT_S))
        into["health"].append(seconds)
        into["errors"] += not ok
    for _ in range(predicts):
        if time.monotonic() > stop_at:
            break
        seconds, ok = timed(lambda: session.post(service.url + "/predict", data=predict, timeout=30,
                                                 headers={"Content-Type": "application/json"}))
        into["predict"].append(seconds)
        into["errors"] += not ok
    session.close()


def report(name: str, got: dict, quiet: dict | None) -> None:
    h99, p50, p99 = (percentile(got["health"], 99), percentile(got["predict"], 50), percentile(got["predict"], 99))
    line = (f"{name}: /health x{len(got['health'])} p50 {percentile(got['health'], 50) * 1e3:.1f} ms, "
            f"p99 {h99 * 1e3:.1f} ms | one-image /predict x{len(got['predict'])} p50 {p50 * 1e3:.0f} ms, "
            f"p99 {p99 * 1e3:.0f} ms | errors (incl. {REQUEST_TIMEOUT_S:.0f} s timeouts) {got['errors']}")
    if quiet:
        hr = h99 / percentile(quiet["health"], 99)
        pr = p99 / percentile(quiet["predict"], 99)
        line += (f" | p99 / quiet: /health {hr:.2f}x, /predict {pr:.2f}x "
                 f"({'within' if max(hr, pr) <= 2 else 'NOT within'} the 2x goal)")
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--threads", type=int, default=4, help="aesemo serve --threads (its default: 4)")
    parser.add_argument("--slow", type=int, default=50, help="slow connections in (b)")
    parser.add_argument("--hanging", type=int, default=32, help="hanging image URLs of the /predict in (c)")
    parser.add_argument("--health", type=int, default=300, help="/health requests per phase, over all rounds")
    parser.add_argument("--predicts", type=int, default=20, help="one-image /predicts per phase, over all rounds")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (a), (b), (c), in turns")
    parser.add_argument("--phase-seconds", type=float, default=20.0, help="longest one phase of a round may take")
    args = parser.parse_args()

    images = ImageServer({"/photo.jpg": (photo_jpeg(0, (640, 480)), "image/jpeg")})
    # "127.0.0.1" allows the image server and every hanging host of (c), whatever their ports;
    # slow clients and the hanging /predict must outlast a round: neither is cut inside it
    extra = {"AESEMO_READ_TIMEOUT": "300", "AESEMO_IMAGE_TIMEOUT": "300", "AESEMO_PREDICT_BUDGET": "300"}
    try:
        with Service(backbone=args.backbone, workers=1, threads=args.threads, extra_env=extra,
                     allowed_image_hosts="127.0.0.1") as service:
            run(args, service, images)
    finally:
        images.close()


def run(args, service: Service, images: ImageServer) -> None:
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at start (other jobs share this machine)")
    print(f"server: aesemo serve --workers 1 --threads {args.threads}, backbone {args.backbone}; "
          f"AESEMO_READ_TIMEOUT, AESEMO_IMAGE_TIMEOUT and AESEMO_PREDICT_BUDGET at 300 s for this run; "
          f"{args.rounds} rounds of (a), (b), (c) in turns, so that load from other processes falls on all alike")
    session = local_session()
    session.post(service.url + "/setup", json=recorded_body("setup"), timeout=30).raise_for_status()
    predict = json.dumps(predict_body([images.url + "/photo.jpg"])).encode()
    first = session.post(service.url + "/predict", data=predict, timeout=300,
                         headers={"Content-Type": "application/json"})
    session.close()
    if first.status_code != 200 or first.json().get("errors"):
        raise SystemExit(f"/predict failed: {first.status_code} {first.text[:500]}\n{service.log_tail()}")
    got = {phase: {"health": [], "predict": [], "errors": 0} for phase in "abc"}
    notes = {"b": [], "c": []}
    health, predicts = -(-args.health // args.rounds), -(-args.predicts // args.rounds)
    for _ in range(args.rounds):
        stop_at = time.monotonic() + args.phase_seconds
        measure(service, predict, health, predicts, stop_at, got["a"])
        notes["b"].append(with_slow_clients(args, service, lambda stop: measure(
            service, predict, health, predicts, stop, got["b"])))
        notes["c"].append(with_hanging_predict(args, service, lambda stop: measure(
            service, predict, health, predicts, stop, got["c"])))
    report("(a) quiet", got["a"], None)
    report(f"(b) {args.slow} slow connections, a byte every 2 s (still connected at the end of each round: "
           f"{notes['b']})", got["b"], got["a"])
    report(f"(c) a concurrent /predict of {args.hanging} hanging image URLs (still waiting at the end of each "
           f"round: {notes['c']})", got["c"], got["a"])
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def with_slow_clients(args, service: Service, measure_until) -> int:
    """Runs `measure_until(stop_at)` while --slow connections trickle; how many were still connected."""
    slow = SlowClients(service.port, args.slow)
    try:
        time.sleep(2.5)  # every slow connection has sent its start and one trickled byte
        measure_until(time.monotonic() + args.phase_seconds)
        return slow.still_open()
    finally:
        slow.close()


def with_hanging_predict(args, service: Service, measure_until) -> bool:
    """Runs `measure_until(stop_at)` while a /predict waits on --hanging URLs that never answer;
    whether that /predict was still waiting at the end."""
    hanging = HangingServer()
    body = json.dumps(predict_body([f"{hanging.url}/{i}.jpg" for i in range(args.hanging)])).encode()

    def hanging_predict():
        try:
            local_session().post(service.url + "/predict", data=body, timeout=600,
                                 headers={"Content-Type": "application/json"})
        except Exception:  # its outcome is not what is measured
            pass

    thread = threading.Thread(target=hanging_predict, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while hanging.holding() < min(args.hanging, 8) and time.monotonic() < deadline:
            time.sleep(0.05)
        measure_until(time.monotonic() + args.phase_seconds)
        return thread.is_alive()
    finally:
        hanging.close()  # its fetches fail now, and the server answers it
        thread.join(60)


if __name__ == "__main__":
    main()
