"""Which Authorization header a Label Studio token needs, and a shared cache of access JWTs.

Label Studio 1.23 knows two kinds of API token (docs/label-studio-protocol.md, section 3):

* a legacy token, sent as ``Authorization: Token X`` (off by default in new organisations);
* a Personal Access Token (PAT): a long-lived JWT *refresh* token. Sending it as ``Bearer`` or
  ``Token`` answers 401; it must first be swapped at ``POST /api/token/refresh/`` for an access
  JWT that lives 5 minutes and is sent as ``Authorization: Bearer <access>``.

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
from typing import Callable

REFRESH_PATH = "/api/token/refresh/"

# Renew this long before the access token expires, so a download that starts just before the
# expiry does not reach Label Studio with a dead token.
EXPIRY_MARGIN_S = 30.0
# Used when an access JWT carries no usable exp/iat; Label Studio issues 300 s tokens.
FALLBACK_LIFETIME_S = 240.0


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
