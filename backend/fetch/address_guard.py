"""Which addresses an image download (and the resync's Label Studio client) may reach.

No request reaches a loopback, private, link-local, multicast, reserved or otherwise non-global
address (SSRF), unless its origin is trusted: LABEL_STUDIO_URL's, or listed in
AESEMO_ALLOWED_IMAGE_HOSTS. A name is resolved and checked before each request and each redirect
hop (`AddressGuard.check`), and the address each new connection actually reached is checked
again before anything is sent (the guarded urllib3 pools and httpcore backend), so a DNS answer
that changes between the two (rebinding) is caught too.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import httpcore
import httpx
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from backend.core.settings import Settings
from backend.fetch.deadline import Deadline
from backend.fetch.errors import ImageFetchError, failure_reason, public_url
from backend.fetch import tokens as ls_auth

log = logging.getLogger(__name__)

Origin = ls_auth.Origin


def is_forbidden_address(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for any address an image fetch must not reach unless its host is explicitly trusted."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    return (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified
            # also 100.64.0.0/10 (carrier-grade NAT, used inside clouds and VPNs)
            or not ip.is_global)


def _resolve_addresses(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (a module function so tests can replace it)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def _parse_host_entry(entry: str) -> tuple[str, int | None] | None:
    """An AESEMO_ALLOWED_IMAGE_HOSTS entry: "host", "host:port", "[v6]:port" or a URL."""
    entry = entry.strip().lower()
    if not entry:
        return None
    if "://" in entry:
        parts = urlsplit(entry)
        return (parts.hostname or "").rstrip("."), parts.port
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, sep, port = entry.partition(":")
    if sep and port.isdigit() and ":" not in port:
        return host.rstrip("."), int(port)
    return entry.rstrip("."), None  # bare name, or an IPv6 literal without brackets


def allowed_host_entries(settings: Settings) -> tuple[tuple[str, int | None], ...]:
    return tuple(p for p in map(_parse_host_entry, settings.allowed_image_hosts) if p)


class AddressGuard:
    """Refuses any non-public address (see `is_forbidden_address`), except on trusted origins:
    the operator's Label Studio and AESEMO_ALLOWED_IMAGE_HOSTS. Used by image downloads and by
    the resync's Label Studio client alike."""

    def __init__(self, allowed_hosts: tuple[tuple[str, int | None], ...],
                 studios: dict[Origin, ls_auth.Studio]):
        self._allowed_hosts = allowed_hosts
        self._trusted = frozenset(origin for origin, studio in studios.items() if studio.configured)

    def is_trusted(self, origin: Origin) -> bool:
        host = origin[1].lower().strip("[]").rstrip(".")
        return origin in self._trusted or any(host == h and (p is None or p == origin[2])
                                              for h, p in self._allowed_hosts)

    def check(self, url: str) -> None:
        """Refuse, before connecting, a host that resolves to an address we must not reach."""
        origin = ls_auth.origin_of(url)
        if self.is_trusted(origin):
            return
        try:
            addresses = _resolve_addresses(origin[1], origin[2])
        except (socket.gaierror, UnicodeError) as exc:
            reason = failure_reason(exc)
            raise ImageFetchError("connection", url, f"cannot resolve host {origin[1]!r} ({reason})") from None
        for address in addresses:
            if is_forbidden_address(address):
                raise _forbidden(url, origin, address)

    def check_peer(self, scheme: str, host: str, port: int, address: str) -> None:
        """The check on a connected socket, before anything is sent (`_guarded_pool_classes`)."""
        origin = (scheme, host.lower().strip("[]").rstrip("."), port)
        if not self.is_trusted(origin) and is_forbidden_address(address):
            raise _forbidden(f"{scheme}://{host}:{port}/", origin, address)


def _forbidden(url: str, origin: Origin, address: str) -> ImageFetchError:
    # The address stays in the log: in the answer it would map internal names for the caller.
    log.info("refused %s: %s resolves to %s", public_url(url), origin[1], address)
    return ImageFetchError(
        "forbidden_address", url, f"{origin[1]} resolves to a loopback/private/link-local or otherwise "
        f"non-public address; if this server is meant to be used, add '{origin[1]}:{origin[2]}' to "
        f"AESEMO_ALLOWED_IMAGE_HOSTS (or, for Label Studio itself, set LABEL_STUDIO_URL to it)")


def _guarded_pool_classes(guard: Callable[[str, str, int, str], None], deadline: Deadline | None) -> dict:
    """urllib3 pool classes whose new connections call `guard` with the peer address before any
    byte is sent: the check that still holds if DNS answered differently from our own lookup.
    With a `deadline`, each connection is shut down when it passes."""

    def guarded(connection_cls: type, scheme: str) -> type:
        class GuardedConnection(connection_cls):
            _deadline_handle: int | None = None

            def _new_conn(self):
                sock = super()._new_conn()
                try:
                    guard(scheme, self.host, self.port, sock.getpeername()[0])
                except BaseException:
                    sock.close()
                    raise
                if deadline is not None:
                    self._deadline_handle = deadline.watch(sock)
                return sock

            def close(self):
                super().close()
                if self._deadline_handle is not None:
                    deadline.forget(self._deadline_handle)
                    self._deadline_handle = None
        return GuardedConnection

    return {
        "http": type("GuardedHTTPPool", (HTTPConnectionPool,),
                     {"ConnectionCls": guarded(HTTPConnection, "http")}),
        "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,),
                      {"ConnectionCls": guarded(HTTPSConnection, "https")}),
    }


class _GuardedNetworkBackend(httpcore.SyncBackend):
    """httpcore's connections (httpx, so the Label Studio SDK) with the peer check of
    `_guarded_pool_classes`. httpcore does not know the scheme: the client must not redirect."""

    def __init__(self, guard: Callable[[str, str, int, str], None], scheme: str):
        self._guard = guard
        self._scheme = scheme

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = super().connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            self._guard(self._scheme, host, port, stream.get_extra_info("server_addr")[0])
        except BaseException:
            stream.close()
            raise
        return stream


def guarded_httpx_client(guard: AddressGuard, url: str, timeout_s: float) -> httpx.Client:
    """An httpx client for `url`'s origin only: no redirects, no proxy, every connection's peer
    address checked by `guard` before anything is sent."""
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx has no public hook for the network backend; its pool reads this for each new connection
    transport._pool._network_backend = _GuardedNetworkBackend(guard.check_peer, urlsplit(url).scheme.lower())
    return httpx.Client(transport=transport, follow_redirects=False, trust_env=False, timeout=timeout_s)


class GuardedAdapter(HTTPAdapter):
    """requests' adapter with the peer check of `_guarded_pool_classes`, and every connection
    under `deadline` when one is given."""

    def __init__(self, guard: Callable[[str, str, int, str], None], deadline: Deadline | None = None):
        self._guard = guard  # before super().__init__, which builds the pool manager
        self._deadline = deadline
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _guarded_pool_classes(self._guard, self._deadline)
