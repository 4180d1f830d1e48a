"""The one place that turns a domain error (backend/core/errors.py) into an HTTP status."""
from __future__ import annotations

from backend.core.errors import (Conflict, DomainError, InvalidInput, NotFound, TooLarge, Unavailable,
                                 UpstreamError, Unprocessable)

STATUS_OF: dict[type[DomainError], int] = {
    InvalidInput: 400,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Unprocessable: 422,
    UpstreamError: 502,
    Unavailable: 503,
}


def status_of(exc: DomainError) -> int:
    """The status of the nearest class in the table; 400 for a DomainError it does not name."""
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 400


def error_body(exc: DomainError) -> dict:
    body = {"error": str(exc)}
    if exc.details:
        body["errors"] = exc.details
    return body
