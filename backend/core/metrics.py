"""Prometheus metrics. Under gunicorn (`aesemo serve`) PROMETHEUS_MULTIPROC_DIR is set before
this module is imported, so every worker's numbers add up in `/metrics`."""
from __future__ import annotations

import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

REQUESTS = Counter("aesemo_requests", "HTTP requests by endpoint and status", ["endpoint", "method", "status"])
LATENCY = Histogram("aesemo_request_seconds", "HTTP request latency by endpoint", ["endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
PREDICTIONS = Counter("aesemo_predictions", "predictions returned to Label Studio", ["model_version"])
IMAGE_FAILURES = Counter("aesemo_image_fetch_failures", "images that could not be fetched or decoded", ["kind"])
WEBHOOK_EVENTS = Counter("aesemo_webhook_events", "webhook events recorded", ["action"])


def observe_request(endpoint: str, method: str, status: int, started: float) -> None:
    """Counts a request and its latency since `started` (time.perf_counter())."""
    REQUESTS.labels(endpoint, method, str(status)).inc()
    LATENCY.labels(endpoint).observe(time.perf_counter() - started)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
