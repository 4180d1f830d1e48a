"""The Redis connection RQ needs, and the two small Redis operations every job kind shares."""
from __future__ import annotations

import redis

from backend.core.redis_connection import redis_url
from backend.core.settings import Settings

# a key still naming `value` is deleted; one that moved on to another job is left alone
_DELETE_IF_EQUAL = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def raw_connection(settings: Settings) -> redis.Redis:
    """RQ stores pickled data: it needs a connection that does not decode responses."""
    return redis.Redis.from_url(redis_url(settings))


def text_value(connection: redis.Redis, key: str) -> str | None:
    """A string key's value as text, whichever way `connection` decodes responses."""
    value = connection.get(key)
    return value.decode() if isinstance(value, bytes) else value


def delete_if_equal(connection: redis.Redis, key: str, value: str) -> bool:
    """Deletes `key` only while it still holds `value` (atomic); True when it did."""
    return bool(connection.eval(_DELETE_IF_EQUAL, 1, key, value))
