"""Which Authorization header a Label Studio token needs, and a shared cache of access JWTs.

Label Studio 1.23 knows two kinds of API token (docs/developers/label-studio-protocol.md, section 3):

* a legacy token, sent as ``Authorization: Token X`` (off by default in new organisations);
* a Personal Access Token (PAT): a long-lived JWT *refresh* token. Sending it as ``Bearer`` or
  ``Token`` answers 401; it must first be swapped at ``POST /api/token/refresh/`` for an access
  JWT that lives 5 minutes and is sent as ``Authorization: Bearer <access>``.

Which token may go to which host is decided here, in `label_studios`, for every caller (image
downloads, resync, training jobs, the admin client):

* LABEL_STUDIO_API_KEY is the operator's secret: it goes to LABEL_STUDIO_URL's origin (scheme,
  host, port) and nowhere else. Without LABEL_STUDIO_URL it goes nowhere: whoever can call
  /setup (Basic auth is optional) could otherwise name a host and collect it.
* /setup's access_token is the caller's own: it goes back only to the hostname sent with it.
* Only LABEL_STUDIO_URL is trusted to be on a private address; a /setup hostname is an outside
  host like any other (see backend/fetch/address_guard.py).

This module does no HTTP itself: the caller passes the function that performs the swap, so that
the swap goes through the same guarded session, deadline and error handling as the download.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from collections.abc import Callable
from urllib.parse import urlsplit

REFRESH_PATH = "/api/token/refresh/"
DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]  # (scheme, lower-case host without brackets, port)
_NOT_IN_URLS = frozenset(' "<>\\^`{|}')

# Renew this long before the access token expires, so a download that starts just before the
# expiry does not reach Label Studio with a dead token.
EXPIRY_MARGIN_S = 30.0
# Used when an access JWT carries no usable exp/iat; Label Studio issues 300 s tokens.
FALLBACK_LIFETIME_S = 240.0


def is_http_url(url) -> bool:
    """An absolute http(s) URL with a host, a valid port, and no user info, query or fragment:
    what a Label Studio address may be (anything else, javascript: included, is refused)."""
    # characters no URL may hold unescaped (RFC 3986), quotes and angle brackets among them
    if not isinstance(url, str) or not url.isascii() or not url.isprintable() or any(c in url for c in _NOT_IN_URLS):
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return False
    return (parts.scheme.lower() in DEFAULT_PORTS and bool(parts.hostname) and "@" not in parts.netloc
            and not parts.query and not parts.fragment)


def origin_of(url: str) -> Origin:
    """The origin of `url`; ValueError for a port that is not a number in range."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").rstrip("."), parts.port or DEFAULT_PORTS.get(scheme, 0)


@dataclass(frozen=True)
class Studio:
    """A Label Studio the backend may talk to: its base URL (relative image paths, the API,
    /api/token/refresh/), the token it gets, and whether it is the operator's LABEL_STUDIO_URL
    (the one Label Studio allowed on a private address)."""
    base: str
    token: str | None
    configured: bool


def label_studios(configured_url: str | None, api_key: str | None, hostname: str | None = None,
                  access_token: str | None = None) -> dict[Origin, Studio]:
    """Each origin that counts as Label Studio, with the token it gets: the one rule of the module
    docstring. The first entry is where relative URLs and API calls go: LABEL_STUDIO_URL when set
    (the address the operator chose for the backend; /setup's hostname is what browsers use),
    else /setup's hostname. ValueError for a malformed address."""
    found: dict[Origin, Studio] = {}
    if configured_url:
        same = bool(hostname) and origin_of(hostname) == origin_of(configured_url)
        token = api_key or (access_token if same else None)
        found[origin_of(configured_url)] = Studio(configured_url, token, configured=True)
    if hostname and origin_of(hostname) not in found:
        found[origin_of(hostname)] = Studio(hostname, access_token, configured=False)
    return found


def primary(studios: dict[Origin, Studio]) -> Studio | None:
    """Where relative URLs and API calls go (see `label_studios`)."""
    return next(iter(studios.values()), None)


def token_for(url: str, studios: dict[Origin, Studio]) -> str | None:
    """The token a request to `url` may carry: its origin's, or none."""
    studio = studios.get(origin_of(url))
    return studio.token if studio else None


def jwt_payload(token: str) -> dict | None:
    """The payload of a JWT, or None if `token` is not one. The signature is not checked: we
    only need to know what kind of token we hold, and Label Studio checks the signature."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def token_kind(token: str) -> str:
    """"pat" (a refresh JWT to swap), "access" (a JWT to send as Bearer) or "legacy"."""
    payload = jwt_payload(token)
    if payload is None:
        return "legacy"
    return "pat" if payload.get("token_type") == "refresh" else "access"


def authorization_header(token: str) -> str:
    """The header value for a token that can be sent as it is (legacy or access JWT)."""
    return f"Bearer {token}" if token_kind(token) == "access" else f"Token {token}"


def _expires_at(access: str, now: float) -> float:
    """Local monotonic time at which to stop using `access`.

    The lifetime is taken as exp - iat and counted from now, so a clock difference between this
    machine and Label Studio does not make us keep a dead token or drop a live one.
    """
    payload = jwt_payload(access) or {}
    exp, iat = payload.get("exp"), payload.get("iat")
    if isinstance(exp, (int, float)) and isinstance(iat, (int, float)):
        lifetime = float(exp - iat)
    elif isinstance(exp, (int, float)):
        lifetime = float(exp) - time.time()
    else:
        lifetime = FALLBACK_LIFETIME_S
    return now + lifetime - EXPIRY_MARGIN_S


class AccessTokenCache:
    """Access JWTs minted from PATs, shared by every thread of the process.

    One lock covers the swap itself, so threads that need a token at the same moment cause one
    refresh call rather than one each. Keys hold a hash of the PAT, not the PAT.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    @staticmethod
    def _key(refresh_url: str, pat: str) -> tuple[str, str]:
        return refresh_url, hashlib.sha256(pat.encode("utf-8")).hexdigest()

    def get(self, refresh_url: str, pat: str, mint: Callable[[], str]) -> tuple[str, bool]:
        """(access token, True if it was minted by this call rather than taken from the cache)."""
        key = self._key(refresh_url, pat)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and time.monotonic() < cached[1]:
                return cached[0], False
            access = mint()
            self._tokens[key] = (access, _expires_at(access, time.monotonic()))
            return access, True

    def forget(self, refresh_url: str, pat: str, access: str) -> None:
        """Drop `access` after Label Studio refused it; keep a newer token another thread got."""
        key = self._key(refresh_url, pat)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached[0] == access:
                del self._tokens[key]
