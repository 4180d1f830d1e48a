"""Why a task image could not be fetched: `ImageFetchError` with one of ERROR_KINDS, and the
URL shown without anything secret in it."""
from __future__ import annotations

import requests
import urllib3
from urllib.parse import urlsplit, urlunsplit

from model.errors import AesemoError


ERROR_KINDS = ("not_found", "unauthorized", "forbidden_address", "bad_url", "too_large", "timeout",
               "http_error", "not_image", "unsupported_scheme", "connection")


class ImageFetchError(AesemoError):
    """A task image that could not be fetched. `kind` is one of ERROR_KINDS; `url` is the
    address reduced to scheme://host[:port]/path, so no query-string token can leak from it."""

    def __init__(self, kind: str, url: str, problem: str):
        assert kind in ERROR_KINDS, kind
        self.kind = kind
        self.url = public_url(url)
        self.problem = problem
        super().__init__(f"{self.url or 'image URL'}: {problem}")

    def __reduce__(self):  # keep it picklable (job queues move exceptions between processes)
        return self.__class__, (self.kind, self.url, self.problem)


def public_url(url: str) -> str:
    """`url` without user info, query or fragment (presigned URLs carry signatures there)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<malformed URL>"
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{port}" if port else host
    shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    # data: URLs hold the whole payload in the path.
    return shown if len(shown) <= 200 else shown[:200] + "..."


def _exception_chain(exc: BaseException, limit: int = 12):
    """`exc` and the exceptions it wraps (urllib3 `reason`, causes, contexts, exception args)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < limit:
        current = todo.pop(0)
        seen.append(current)
        yield current
        nested = [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
        todo.extend(e for e in nested if isinstance(e, BaseException) and e not in seen)


def failure_reason(exc: BaseException) -> str:
    """A short cause for a network error, without the exception text (urllib3 messages quote
    the full URL, query string included)."""
    for current in _exception_chain(exc):
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
    return type(exc).__name__


def is_timeout(exc: BaseException) -> bool:
    timeouts = (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    # urllib3's NewConnectionError (e.g. "connection refused") subclasses its ConnectTimeoutError.
    return any(isinstance(e, timeouts) and not isinstance(e, urllib3.exceptions.NewConnectionError)
               for e in _exception_chain(exc))


def network_error(exc: BaseException, url: str) -> ImageFetchError:
    if is_timeout(exc):
        return ImageFetchError("timeout", url, "timed out while talking to the server")
    if isinstance(exc, requests.exceptions.SSLError):
        return ImageFetchError("connection", url, f"TLS error ({failure_reason(exc)})")
    return ImageFetchError("connection", url, f"connection failed ({failure_reason(exc)})")
