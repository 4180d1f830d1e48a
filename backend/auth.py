"""Optional HTTP Basic authentication (Label Studio sends it when the ML backend record has
auth_method=BASIC_AUTH). Compared in constant time."""
from __future__ import annotations

import base64
import binascii
import hmac
from urllib.parse import urlsplit


def basic_auth_ok(header: str | None, user: str, password: str) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    given_user, sep, given_password = decoded.partition(":")
    # both comparisons always run, so timing does not tell which part was wrong
    user_ok = hmac.compare_digest(given_user.encode(), user.encode())
    password_ok = hmac.compare_digest(given_password.encode(), password.encode())
    return bool(sep) and user_ok and password_ok


def same_origin(origin: str | None, host: str) -> bool:
    """True without an Origin header (servers, curl) or when it names the host (and port) the
    request was sent to. Browsers send Origin on every cross-site POST. The scheme is left out:
    behind a TLS-terminating proxy the page is https while the backend sees http."""
    if not origin:
        return True
    return urlsplit(origin).netloc.lower() == host.lower()
