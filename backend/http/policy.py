"""The request policy of the Flask app (backend/http/app.py). Who may call (Basic auth), from
where (no cross-site browser requests; the admin's endpoints only under this backend's own host
names), how much body, and which JSON error answers what went wrong."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import redis
from flask import request
from gunicorn.http.errors import ParseException
from werkzeug.wsgi import get_host

from backend.core.errors import DomainError, InvalidInput, TooLarge
from backend.http.auth import basic_auth_ok, cross_site_refusal, host_refusal
from backend.http.errors import error_body, status_of

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
INTERNAL_ERROR = "internal server error; see the server log"
REDIS_DOWN = ("Redis is unreachable: votes, consensus, jobs and versions are unavailable until it is back "
              "(predictions still come from the models in memory)")
# methods a page elsewhere may send with the admin's cached credentials without changing anything
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# what reading a body can raise for the client's mistakes: a broken chunked framing (gunicorn
# parses chunks as the app reads them) or a connection lost mid-body
_UNREADABLE_BODY = (ParseException, OSError)


@dataclass(frozen=True)
class Refusal:
    status: int
    body: dict
    headers: dict = field(default_factory=dict)


class RequestPolicy:
    def __init__(self, settings):
        self.user = settings.basic_auth_user
        self.password = settings.basic_auth_pass or ""
        self.allowed_hosts = settings.allowed_hosts

    def refusal(self, environ) -> Refusal | None:
        """Why the request is refused before any handler runs, or None to let it through."""
        if self.user and not basic_auth_ok(environ.get("HTTP_AUTHORIZATION"), self.user, self.password):
            return Refusal(401, {"error": "wrong or missing Basic credentials"},
                           {"WWW-Authenticate": 'Basic realm="aesemo"'})
        if environ.get("REQUEST_METHOD") not in SAFE_METHODS:
            # a page elsewhere must not use the admin's browser (and its cached Basic
            # credentials) to promote versions or start jobs; servers send neither header
            why = cross_site_refusal(environ.get("HTTP_ORIGIN"), environ.get("HTTP_SEC_FETCH_SITE"),
                                     get_host(environ))
            if why:
                return Refusal(403, {"error": why})
        return None

    def admin_refusal(self, environ) -> Refusal | None:
        """Why a request to the admin page or the admin's endpoints is refused for the host it
        names (after `refusal`), or None. Label Studio's endpoints take any host: Label Studio
        reaches the backend under whatever name its network gives it."""
        why = host_refusal(environ.get("HTTP_HOST"), self.allowed_hosts)
        return Refusal(403, {"error": why}) if why else None

    @staticmethod
    def failure(exc: Exception, method: str, path: str) -> tuple[int, dict]:
        """The status and JSON body for what a handler raised."""
        if isinstance(exc, DomainError):
            return status_of(exc), error_body(exc)
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            log.warning("%s %s: Redis is unreachable (%s)", method, loggable(path), exc)
            return 503, {"error": REDIS_DOWN}
        # logged whole here; the client learns nothing of the internals
        log.error("Exception on %s %s", method, loggable(path), exc_info=exc)
        return 500, {"error": INTERNAL_ERROR}


def json_body():
    return parse_json(request_body())


def json_body_or_empty():
    """The JSON body, or {} for an empty one (a bare POST)."""
    raw = request_body()
    return parse_json(raw) if raw.strip() else {}


def request_body() -> bytes:
    """The body; 413 over MAX_BODY_BYTES, chunked or not; 400 when it cannot be read."""
    if request.content_length is None:
        # werkzeug cuts a chunked body (no Content-Length to refuse up front) off at the limit
        # without a word: reading one byte more tells a body cut off from one that ended there
        request.max_content_length = MAX_BODY_BYTES + 1
    raw = read_body(request.get_data)
    if len(raw) > MAX_BODY_BYTES:
        raise TooLarge(f"body over {MAX_BODY_BYTES} bytes")
    return raw


def read_body(read) -> bytes:
    try:
        return read()
    except _UNREADABLE_BODY as exc:
        raise InvalidInput(f"the request body could not be read ({type(exc).__name__}: {str(exc)[:200]})") from None


def parse_json(raw: bytes):
    if not raw:
        raise InvalidInput("empty body; expected JSON")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"body is not valid JSON ({exc})") from None
    except ValueError:  # Python refuses to convert an integer of over 4300 digits
        raise InvalidInput("body is not valid JSON for this server: it holds a number too long to read "
                           "(over 4300 digits)") from None
    except RecursionError:  # e.g. "[[[[..." thousands deep: the client's mistake, not a 500
        raise InvalidInput("body is not valid JSON (nested too deeply)") from None


def loggable(path: str) -> str:
    """A request path as a log shows it. A decoded path may hold CR and LF (%0d%0a) or other
    characters that are not printable, which would start a forged line: they and the backslash
    become Python's backslash escapes (\\n, \\x1b, \\u2028, \\\\), so each request stays one
    line whatever it sent. A byte that was no UTF-8, kept by the "surrogateescape" error handler,
    shows as that byte (\\xff). (gunicorn's access log escapes the quote itself.)"""
    if path.isprintable() and "\\" not in path:
        return path
    return "".join(c if c.isprintable() and c != "\\" else _escaped(c) for c in path)


def _escaped(c: str) -> str:
    if "\udc80" <= c <= "\udcff":
        return f"\\x{ord(c) - 0xdc00:02x}"
    return c.encode("unicode_escape").decode("ascii")  # "\\" for the backslash
