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


def cross_site_refusal(origin: str | None, fetch_site: str | None, host: str) -> str | None:
    """Why a state-changing request is refused as cross-site, or None to let it through.
    Besides Origin, browsers send Sec-Fetch-Site, which a page cannot forge: `cross-site` is
    refused; `same-site` (another port or subdomain of the site: a different origin, as foreign
    as another site) unless its Origin names this host; `same-origin`, `none` (typed by the
    user) and none at all (servers such as Label Studio, curl) are fine."""
    if not same_origin(origin, host):
        return f"cross-site request from {origin} refused"
    site = (fetch_site or "").strip().lower()
    if site == "cross-site" or (site == "same-site" and not origin):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    return None
