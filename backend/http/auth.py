"""Optional HTTP Basic authentication (Label Studio sends it when the ML backend record has
auth_method=BASIC_AUTH), compared in constant time; which browsers' requests are refused: cross-site
ones, and admin requests to a host name that is not this backend's (DNS rebinding)."""
from __future__ import annotations

import base64
import hmac
import ipaddress
from urllib.parse import urlsplit


def basic_auth_ok(header: str | None, user: str, password: str) -> bool:
    """Whether `header` (the Authorization value, as WSGI gives it: latin-1 text of any bytes)
    carries these credentials. Anything malformed is a plain no: the scheme is matched without
    regard to case (RFC 9110 11.1), and b64decode raises ValueError for non-ASCII text and bad
    padding alike, decode() for credentials that are no UTF-8."""
    if not header or header[:6].lower() != "basic ":
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
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
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # "http://[::1": an Origin no browser sends, and no match for any host
        return False
    return netloc.lower() == host.lower()


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


def host_name(host: str) -> str:
    """The name or address a Host header value names, lowercased, without its port, the brackets
    of an IPv6 literal or a final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        inside, bracket, _ = host[1:].partition("]")
        return inside if bracket else host
    return host.rpartition(":")[0].rstrip(".") if ":" in host else host.rstrip(".")


def is_loopback_host(name: str) -> bool:
    """localhost, 127.0.0.0/8, ::1 (and ::ffff:127.x.y.z): a browser reaches these on its own
    machine whatever DNS says, so a page that names them is no rebound name."""
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def host_refusal(host: str | None, allowed: tuple[str, ...]) -> str | None:
    """Why a request to the admin's endpoints is refused for its Host, or None to let it through.
    DNS rebinding points a name of the attacker's at this backend: the browser then sends that
    name as Host, and the page reads the answers as its own origin's. Loopback names and the
    listed ones (`*`: any) pass. No Host at all comes from no browser (HTTP/1.0 clients), so it
    passes too."""
    if not host:
        return None
    name = host_name(host)
    if is_loopback_host(name) or "*" in allowed or name in {host_name(entry) for entry in allowed}:
        return None
    shown = host if len(host) <= 200 and host.isprintable() else repr(host[:200])
    return (f"host {shown} is not allowed for the admin's endpoints: list its name in AESEMO_ALLOWED_HOSTS "
            "(loopback names and addresses are always allowed)")
