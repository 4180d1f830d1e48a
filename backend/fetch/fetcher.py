"""Downloading task images from Label Studio (or wherever the task points), safely.

What Label Studio 1.23 puts in ``task.data.image`` (docs/developers/label-studio-protocol.md, section 8):
absolute http(s) URLs, and relative ``/data/upload/...`` or ``/data/local-files/?d=...`` paths
that must be fetched from Label Studio with a token. Cloud storage gives ``s3://``-style URIs
only when presigning/proxying is off; we cannot read those.

Rules this module keeps:

* A token goes only to the Label Studio origin it belongs to (scheme, host and port), never to
  any other host, including redirect targets: LABEL_STUDIO_API_KEY only to LABEL_STUDIO_URL,
  /setup's access_token only to /setup's hostname (backend/fetch/tokens.py decides).
* Relative URLs are Label Studio's: LABEL_STUDIO_URL when set, else /setup's hostname.
* No request reaches a loopback, private, link-local, multicast, reserved or otherwise
  non-global address (SSRF), unless the host is LABEL_STUDIO_URL's or listed in
  AESEMO_ALLOWED_IMAGE_HOSTS. A /setup hostname is not trusted for being named there: anyone
  who can call /setup could name an internal service. The name is resolved and checked before
  each request and each redirect hop; the address each new connection actually reached is
  checked again before anything is sent, so a DNS answer that changes between the two
  (rebinding) is caught too. A refused address is refused before connecting, so the answer is
  the same whether anything listens there or not.
* One deadline per fetch (connect, response heads, redirects, token refresh and body together),
  held however slowly the server sends (backend/fetch/deadline.py shuts the sockets down when it
  passes); a byte limit while streaming; a pixel limit and a decode memory limit, checked from
  the image's header before its pixels are decoded (model/images.py).

The address rules are backend/fetch/address_guard.py's, the errors backend/fetch/errors.py's and
the bounded download cache backend/fetch/disk_cache.py's; this module is the download flow.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from PIL import Image

from backend.core.settings import Settings
from backend.fetch.address_guard import AddressGuard, GuardedAdapter, allowed_host_entries
from backend.fetch.deadline import Deadline
from backend.fetch.disk_cache import DiskCache
from backend.fetch.errors import ImageFetchError, network_error, public_url
from backend.fetch import tokens as ls_auth
from model.errors import ImageError, ImageTooLarge
from model.images import open_image

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
_CHUNK_BYTES = 64 * 1024
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = ls_auth.DEFAULT_PORTS
_CLOUD_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "azure-blob", "azure-spi"})
_REQUEST_HEADERS = {
    "Accept": "image/*, */*;q=0.5",
    # Images do not compress; asking for identity keeps the byte limit about real bytes and
    # leaves no room for a gzip bomb.
    "Accept-Encoding": "identity",
    "User-Agent": "aesemo-image-fetcher",
}

Origin = ls_auth.Origin


class ImageFetcher:
    """Fetches task images over http(s) with the rules in the module docstring.

    Safe to share between threads: the only shared mutable state is the access-token cache
    (locked) and the on-disk cache (written atomically); each fetch uses its own session.
    """

    def __init__(self, settings: Settings, cache_dir: Path):
        self._settings = settings
        self._cache = DiskCache(cache_dir, settings.download_cache_bytes)
        self._allowed_hosts = allowed_host_entries(settings)
        self._tokens = ls_auth.AccessTokenCache()

    # ----- public API -----------------------------------------------------------------------

    def fetch(self, url: str, *, hostname: str | None = None,
              access_token: str | None = None) -> Image.Image:
        """The image at `url` as 8-bit RGB. Raises ImageFetchError."""
        resolved = self.resolve_url(url, hostname=hostname)
        studios = self._label_studios(hostname, access_token)
        key = _cache_key(resolved, studios)
        data = self._cache_read(key, resolved)
        if data is not None:
            try:
                return self._decode(data, resolved)
            except ImageFetchError:
                self._cache.drop(key)  # a bad entry must not fail every later fetch
                raise
        data = self._download(resolved, studios)
        image = self._decode(data, resolved)
        self._cache_write(key, data)  # only after it decoded: failures are never cached
        return image

    def cache_key(self, url: str, *, hostname: str | None = None, access_token: str | None = None) -> str:
        """What `fetch` caches the image under for these credentials: a cache of anything made
        from the image keys by it too, so that it is never served to a fetch without them."""
        return _cache_key(self.resolve_url(url, hostname=hostname), self._label_studios(hostname, access_token))

    def resolve_url(self, url: str, *, hostname: str | None = None) -> str:
        """The absolute http(s) URL a task's image value stands for. Raises ImageFetchError."""
        if not isinstance(url, str) or not url.strip():
            raise ImageFetchError("bad_url", "", "the task has an empty image URL")
        url = url.strip()
        if url.startswith("//"):
            raise ImageFetchError("bad_url", url, "scheme-relative URLs (//host/...) are not supported")
        if url.startswith("/"):
            return self._label_studio_base(hostname, url).rstrip("/") + url
        self._check_url(url)
        return url

    # ----- URL checks ---------------------------------------------------------------------------

    def _label_studio_base(self, hostname: str | None, url: str) -> str:
        studio = ls_auth.primary(self._label_studios(hostname, None))
        if studio is None:
            raise ImageFetchError(
                "bad_url", url, "a relative URL needs Label Studio's address, but LABEL_STUDIO_URL is "
                "not set and Label Studio sent no hostname (set LABEL_STUDIO_URL, or start Label "
                "Studio with --host)")
        self._check_url(studio.base, what="Label Studio address")
        return studio.base

    @staticmethod
    def _check_url(url: str, what: str = "image URL") -> None:
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError for a port that is not a number in range
        except ValueError:
            raise ImageFetchError("bad_url", url, f"malformed {what}") from None
        scheme = parts.scheme.lower()
        if scheme in _CLOUD_SCHEMES:
            raise ImageFetchError(
                "unsupported_scheme", url, f"{scheme}:// cloud storage URLs cannot be read by the backend; "
                "turn on 'Use pre-signed URLs' (or proxying) in the Label Studio storage settings so "
                "tasks carry http(s) URLs")
        if not scheme:
            raise ImageFetchError("bad_url", url, f"{what} is neither an http(s) URL nor a path starting with '/'")
        if scheme not in _DEFAULT_PORTS:
            raise ImageFetchError("unsupported_scheme", url, f"{scheme}: URLs are not fetched; only http and https")
        if not parts.hostname:
            raise ImageFetchError("bad_url", url, f"{what} has no host")

    # ----- who is Label Studio, who is trusted ------------------------------------------------

    def _label_studios(self, hostname: str | None,
                       access_token: str | None) -> dict[Origin, ls_auth.Studio]:
        """The origins that count as Label Studio for this fetch, with the token each gets."""
        try:
            return ls_auth.label_studios(self._settings.label_studio_url, self._settings.label_studio_api_key,
                                         hostname, access_token)
        except ValueError:
            raise ImageFetchError("bad_url", hostname or self._settings.label_studio_url or "",
                                  "malformed Label Studio address") from None

    # ----- HTTP -----------------------------------------------------------------------------

    def _session(self, guard: AddressGuard, deadline: Deadline) -> requests.Session:
        session = requests.Session()
        # No proxies or ~/.netrc from the environment: a proxy would hide the real address from
        # the SSRF checks, and netrc would add credentials for hosts we do not trust.
        session.trust_env = False
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        adapter = GuardedAdapter(guard.check_peer, deadline)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def _download(self, url: str, studios: dict[Origin, ls_auth.Studio]) -> bytes:
        guard = AddressGuard(self._allowed_hosts, studios)
        with Deadline(self._settings.image_timeout_s) as deadline, self._session(guard, deadline) as session:
            for _ in range(MAX_REDIRECTS + 1):
                with self._request(session, url, studios, guard, deadline) as response:
                    if response.status_code not in _REDIRECT_CODES:
                        self._raise_for_status(response, url, studios)
                        return self._read_body(response, url, deadline)
                    url = self._redirect_target(response, url)
        raise ImageFetchError("http_error", url, f"more than {MAX_REDIRECTS} redirects")

    def _request(self, session: requests.Session, url: str, studios: dict[Origin, ls_auth.Studio],
                 guard: AddressGuard, deadline: Deadline) -> requests.Response:
        """One hop: checks, the token if `url` is Label Studio's, and one retry with a fresh access
        token when Label Studio refuses a cached one (it may have expired early, or been revoked)."""
        self._check_url(url)
        guard.check(url)
        header, cached = self._authorization(session, url, studios, deadline)
        response = self._send(session, url, header, deadline)
        if response.status_code == 401 and cached:
            response.close()
            studio = studios[ls_auth.origin_of(url)]
            self._tokens.forget(self._refresh_url(studio), studio.token, header.split(" ", 1)[1])
            header, _ = self._authorization(session, url, studios, deadline)
            response = self._send(session, url, header, deadline)
        return response

    def _send(self, session: requests.Session, url: str, authorization: str | None,
              deadline: Deadline) -> requests.Response:
        headers = dict(_REQUEST_HEADERS)
        if authorization:
            headers["Authorization"] = authorization
        try:
            response = session.get(url, headers=headers, stream=True, allow_redirects=False,
                                   timeout=self._remaining(deadline, url))
        except requests.RequestException as exc:
            raise _failure(exc, url, deadline) from None
        return _in_time(response, url, deadline)

    @staticmethod
    def _remaining(deadline: Deadline, url: str) -> float:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise _timeout(url)
        return remaining

    @staticmethod
    def _redirect_target(response: requests.Response, url: str) -> str:
        location = response.headers.get("Location")
        if not location:
            raise ImageFetchError("http_error", url, f"HTTP {response.status_code} redirect without a Location")
        return urljoin(url, location)

    @staticmethod
    def _raise_for_status(response: requests.Response, url: str, studios: dict[Origin, ls_auth.Studio]) -> None:
        code = response.status_code
        if 200 <= code < 300:
            return
        if code in (404, 410):
            raise ImageFetchError("not_found", url, f"not found (HTTP {code})")
        if code in (401, 403):
            studio = studios.get(ls_auth.origin_of(url))
            if studio is None:
                hint = "the server refused access (an expired pre-signed URL?)"
            elif studio.token is None and studio.configured:
                hint = "Label Studio needs a token: set LABEL_STUDIO_API_KEY"
            elif studio.token is None:
                hint = ("Label Studio needs a token, /setup sent none, and LABEL_STUDIO_API_KEY goes only to "
                        "LABEL_STUDIO_URL: set both")
            else:
                hint = ("Label Studio refused the token (legacy tokens are off by default since "
                        "Label Studio 1.20: use a Personal Access Token, or enable legacy tokens)")
            raise ImageFetchError("unauthorized", url, f"HTTP {code}: {hint}")
        raise ImageFetchError("http_error", url, f"the server answered HTTP {code}")

    def _read_body(self, response: requests.Response, url: str, deadline: Deadline) -> bytes:
        limit = self._settings.max_image_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ImageFetchError("too_large", url, f"{int(declared)} bytes is over the limit of {limit} bytes")
        # read1 returns whatever one socket read gives, so the byte limit is checked as the bytes
        # come (urllib3 1.x has only read).
        read = getattr(response.raw, "read1", response.raw.read)
        body = bytearray()
        while True:
            self._remaining(deadline, url)
            try:
                chunk = read(_CHUNK_BYTES, decode_content=True)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise _failure(exc, url, deadline) from None
            if not chunk:
                # the deadline's shutdown looks like the end of a body without Content-Length
                if deadline.expired():
                    raise _timeout(url)
                return bytes(body)
            body += chunk
            if len(body) > limit:
                raise ImageFetchError("too_large", url, f"more than the limit of {limit} bytes")

    # ----- tokens ---------------------------------------------------------------------------

    @staticmethod
    def _refresh_url(studio: ls_auth.Studio) -> str:
        return studio.base.rstrip("/") + ls_auth.REFRESH_PATH

    def _authorization(self, session: requests.Session, url: str, studios: dict[Origin, ls_auth.Studio],
                       deadline: Deadline) -> tuple[str | None, bool]:
        """(Authorization value or None, whether it came from the access-token cache)."""
        studio = studios.get(ls_auth.origin_of(url))
        if studio is None or not studio.token:
            return None, False
        if ls_auth.token_kind(studio.token) != "pat":
            return ls_auth.authorization_header(studio.token), False
        refresh_url = self._refresh_url(studio)
        access, minted = self._tokens.get(
            refresh_url, studio.token, lambda: self._swap_pat(session, refresh_url, studio.token, deadline))
        return f"Bearer {access}", not minted

    def _swap_pat(self, session: requests.Session, refresh_url: str, pat: str, deadline: Deadline) -> str:
        """POST the PAT to /api/token/refresh/ and return the access JWT it buys."""
        try:
            response = session.post(refresh_url, json={"refresh": pat}, headers={"Accept": "application/json"},
                                    allow_redirects=False, timeout=self._remaining(deadline, refresh_url))
        except requests.RequestException as exc:
            raise _failure(exc, refresh_url, deadline) from None
        with _in_time(response, refresh_url, deadline):
            if response.status_code in (400, 401, 403):
                raise ImageFetchError(
                    "unauthorized", refresh_url, f"Label Studio refused the Personal Access Token "
                    f"(HTTP {response.status_code}); it may have been revoked: create a new one")
            if response.status_code != 200:
                raise ImageFetchError("http_error", refresh_url, f"token refresh answered HTTP {response.status_code}")
            try:
                access = response.json().get("access")
            except (ValueError, AttributeError):
                access = None
        if not isinstance(access, str) or not access:
            raise ImageFetchError("http_error", refresh_url, "token refresh reply has no 'access' token")
        log.debug("swapped the Personal Access Token for an access token at %s", public_url(refresh_url))
        return access

    # ----- decoding ---------------------------------------------------------------------------

    def _decode(self, data: bytes, url: str) -> Image.Image:
        try:
            return open_image(data, max_pixels=self._settings.max_image_pixels,
                              max_decode_bytes=self._settings.max_image_decode_bytes, name="content")
        except ImageTooLarge as exc:
            raise ImageFetchError("too_large", url, str(exc).removeprefix("content: ")) from None
        except ImageError as exc:
            raise ImageFetchError("not_image", url, str(exc).removeprefix("content: ")) from None
        except Exception as exc:  # untrusted bytes can trip any decoder error; none may escape raw
            raise ImageFetchError("not_image", url, f"cannot be decoded ({type(exc).__name__})") from None

    # ----- cache ------------------------------------------------------------------------------

    def _cache_read(self, key: str, url: str) -> bytes | None:
        # an entry stored under a larger limit than today's is a miss
        data = self._cache.read_bytes(key, max_size=self._settings.max_image_bytes)
        if data is not None:
            log.debug("image cache hit for %s", public_url(url))
        return data

    def _cache_write(self, key: str, data: bytes) -> None:
        """A full disk costs the cache, not the fetch."""
        try:
            self._cache.write(key, lambda temp: Path(temp).write_bytes(data))
            self._cache.evict_over_bound()
        except OSError as exc:
            log.warning("cannot write image cache in %s (%s)", self._cache.folder, exc.strerror)


def _cache_key(url: str, studios: dict[Origin, ls_auth.Studio]) -> str:
    """`url` with a fingerprint of every token a fetch of it may send (redirects included): what
    one set of credentials downloaded is served from the cache only to fetches that would send
    the same ones; any other asks the host, which may refuse. A public image is downloaded once
    per set of credentials. Only a hash of the tokens is in the key, and the cache names its
    files by a hash of the key."""
    tokens = sorted([list(origin), studio.token] for origin, studio in studios.items() if studio.token)
    fingerprint = hashlib.sha256(json.dumps(tokens).encode()).hexdigest() if tokens else "none"
    return f"{url}#credentials={fingerprint}"


def _timeout(url: str) -> ImageFetchError:
    return ImageFetchError("timeout", url, "the download took longer than AESEMO_IMAGE_TIMEOUT")


def _failure(exc: BaseException, url: str, deadline: Deadline) -> ImageFetchError:
    """A network error, or the timeout when the deadline's shutdown is what broke the read."""
    return _timeout(url) if deadline.expired() else network_error(exc, url)


def _in_time(response: requests.Response, url: str, deadline: Deadline) -> requests.Response:
    """`response`, unless the deadline passed while it was read: the deadline's shutdown ends the
    head like the end of the data, and http.client answers with the lines it had."""
    if deadline.expired():
        response.close()
        raise _timeout(url)
    return response
