"""backend.fetch.fetcher.ImageFetcher against real HTTP servers on loopback.

Two servers run in threads: "Label Studio" on 127.0.0.1 and "elsewhere" on 127.0.0.2 (also
loopback). No test sends traffic outside 127.0.0.0/8: cloud and other schemes are refused before
any network use, and the address classifier is tested on literal IPs only.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from backend.fetch import address_guard
from backend.fetch import tokens as ls_auth
from backend.fetch.address_guard import is_forbidden_address
from backend.fetch.errors import ERROR_KINDS, ImageFetchError, public_url
from backend.fetch.fetcher import ImageFetcher
from backend.labelstudio.admin_client import LabelStudioClient
from backend.core.settings import Settings
from backend.training.image_cache import cached_training_image, training_image_cache

from canary import Canary
from hanging_server import DripServer

LEGACY = "legacy-token-0123456789abcdef"
PNG_SIZE = (8, 6)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(payload: dict) -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}.{_b64(b'not-a-real-signature')}"


PAT = make_jwt({"token_type": "refresh", "exp": int(time.time()) + 10 ** 9, "iat": int(time.time()), "jti": "pat"})


def png_bytes(size=PNG_SIZE, color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width=100_000, height=100_000) -> bytes:
    """A valid PNG header claiming width x height pixels, in a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class Recorder:
    """What one server saw, plus the switches tests flip."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)
        self.refresh_bodies: list[dict] = []
        self.accepted = {f"Token {LEGACY}"}
        self.access_lifetime = 300
        self.accept_minted = True

    def record(self, method, path, auth):
        with self.lock:
            self.requests.append((method, path, auth))

    def paths(self):
        return [path for _, path, _ in self.requests]

    def auths(self):
        return [auth for _, _, auth in self.requests]

    def refresh_count(self):
        return len(self.refresh_bodies)


def make_handler(recorder: Recorder, other_base: callable):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def send_body(self, code, body=b"", content_type="image/png", length=True):
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def redirect(self, location):
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            recorder.record("POST", self.path, self.headers.get("Authorization"))
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            if self.path != "/api/token/refresh/":
                return self.send_body(404, b"{}", "application/json")
            with recorder.lock:
                recorder.refresh_bodies.append(body)
                serial = len(recorder.refresh_bodies)
            if body.get("refresh") != PAT:
                return self.send_body(401, b'{"detail":"Token is invalid"}', "application/json")
            now = int(time.time())
            access = make_jwt({"token_type": "access", "iat": now, "exp": now + recorder.access_lifetime,
                               "jti": f"access-{serial}"})
            if recorder.accept_minted:
                recorder.accepted.add(f"Bearer {access}")
            self.send_body(200, json.dumps({"access": access}).encode(), "application/json")

        def do_GET(self):
            auth = self.headers.get("Authorization")
            recorder.record("GET", self.path, auth)
            path = self.path.split("?", 1)[0]
            if path in ("/image.png", "/other/image.png"):
                return self.send_body(200, png_bytes())
            if path.startswith("/data/upload/") or path.startswith("/data/local-files/"):
                if auth not in recorder.accepted:
                    return self.send_body(401, b'{"detail":"Authentication credentials were not provided."}',
                                          "application/json")
                return self.send_body(200, png_bytes())
            if path == "/redirect-away":
                return self.redirect(f"{other_base()}/image.png")
            if path.startswith("/chain/"):
                left = int(path.rsplit("/", 1)[1])
                return self.redirect("/image.png" if left == 0 else f"/chain/{left - 1}")
            if path == "/not-image":
                return self.send_body(200, b"<html><body>login</body></html>", "text/html")
            if path == "/big-declared":
                return self.send_body(200, b"\0" * 5000)
            if path == "/big-streamed":  # no Content-Length: HTTP/1.0, body ends at close
                return self.send_body(200, png_bytes() + b"\0" * 5000, length=False)
            if path == "/bomb.png":
                return self.send_body(200, bomb_png())
            if path == "/wide.png":  # 1000 x 1000 RGB: 8,000,000 bytes to decode, in a few dozen
                return self.send_body(200, bomb_png(1000, 1000))
            if path == "/slow":
                time.sleep(3)
                return self.send_body(200, png_bytes())
            if path == "/drip":
                return self.drip()
            self.send_body(404, b"not found", "text/plain")

        def drip(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(60):  # ~3 s, one byte at a time
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:  # the client gave up, as it should
                pass

    return Handler


class Server:
    def __init__(self, host: str, other_base: callable = lambda: ""):
        self.recorder = Recorder()
        self.httpd = ThreadingHTTPServer((host, 0), make_handler(self.recorder, other_base))
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # slow handlers must not hold up teardown
        self.port = self.httpd.server_address[1]
        self.base = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def servers():
    other = Server("127.0.0.2")
    ls = Server("127.0.0.1", other_base=lambda: other.base)
    yield ls, other
    ls.close()
    other.close()


@pytest.fixture
def ls(servers):
    servers[0].recorder.reset()
    servers[1].recorder.reset()
    return servers[0]


@pytest.fixture
def other(servers, ls):
    return servers[1]


@pytest.fixture
def make_fetcher(tmp_path):
    def make(**overrides):
        options = {"image_timeout_s": 5.0, "max_image_bytes": 4000}
        options.update(overrides)
        return ImageFetcher(Settings(**options), tmp_path / "cache")
    return make


def fetch_error(fetcher, url, **kwargs) -> ImageFetchError:
    with pytest.raises(ImageFetchError) as info:
        fetcher.fetch(url, **kwargs)
    assert info.value.kind in ERROR_KINDS
    return info.value


# ----- success paths -------------------------------------------------------------------------

def test_absolute_url_allowed_via_allowed_hosts(ls, make_fetcher):
    fetcher = make_fetcher(allowed_image_hosts=(f"127.0.0.1:{ls.port}",))
    image = fetcher.fetch(f"{ls.base}/image.png")
    assert image.mode == "RGB" and image.size == PNG_SIZE
    assert ls.recorder.requests == [("GET", "/image.png", None)]


@pytest.mark.parametrize("entry", ["LOCALHOST", "localhost:{port}", "http://LocalHost:{port}"])
def test_allowed_host_entries_match_case_insensitively(ls, make_fetcher, entry):
    fetcher = make_fetcher(allowed_image_hosts=(entry.format(port=ls.port),))
    assert fetcher.fetch(f"http://LocalHost:{ls.port}/image.png").size == PNG_SIZE


def test_allowed_host_with_other_port_does_not_match(ls, make_fetcher):
    fetcher = make_fetcher(allowed_image_hosts=(f"127.0.0.1:{ls.port + 1}",))
    assert fetch_error(fetcher, f"{ls.base}/image.png").kind == "forbidden_address"
    assert ls.recorder.requests == []


def allow(server) -> dict:
    """Settings that let a /setup hostname on a loopback test server be reached at all."""
    return {"allowed_image_hosts": (f"127.0.0.1:{server.port}",)}


def test_relative_upload_url_with_hostname_and_legacy_token(ls, make_fetcher):
    fetcher = make_fetcher(**allow(ls))
    image = fetcher.fetch("/data/upload/1/ca16892c-img4.png", hostname=ls.base, access_token=LEGACY)
    assert image.size == PNG_SIZE
    assert ls.recorder.requests == [("GET", "/data/upload/1/ca16892c-img4.png", f"Token {LEGACY}")]


def test_relative_local_files_url_resolved_against_label_studio_url(ls, make_fetcher):
    fetcher = make_fetcher(label_studio_url=ls.base + "/", label_studio_api_key=LEGACY)
    assert fetcher.fetch("/data/local-files/?d=images/img2.png").size == PNG_SIZE
    assert ls.recorder.requests == [("GET", "/data/local-files/?d=images/img2.png", f"Token {LEGACY}")]


def test_absolute_label_studio_url_gets_the_token(ls, make_fetcher):
    # Local Storage tasks carry absolute URLs on Label Studio's own host (Label Studio protocol notes, section 8).
    fetcher = make_fetcher(**allow(ls))
    url = f"{ls.base}/data/local-files/?d=images/img5.png"
    assert fetcher.fetch(url, hostname=ls.base, access_token=LEGACY).size == PNG_SIZE
    assert ls.recorder.auths() == [f"Token {LEGACY}"]


def test_configured_key_wins_over_setup_access_token(ls, make_fetcher):
    fetcher = make_fetcher(label_studio_url=ls.base, label_studio_api_key=LEGACY)
    fetcher.fetch("/data/upload/1/a.png", hostname=ls.base, access_token="from-setup")
    assert ls.recorder.auths() == [f"Token {LEGACY}"]


def test_redirect_chain_is_followed(ls, make_fetcher):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    assert fetcher.fetch(f"{ls.base}/chain/4").size == PNG_SIZE  # 5 redirects: the limit
    assert ls.recorder.paths() == ["/chain/4", "/chain/3", "/chain/2", "/chain/1", "/chain/0", "/image.png"]


def test_too_many_redirects(ls, make_fetcher):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    assert fetch_error(fetcher, f"{ls.base}/chain/5").kind == "http_error"
    assert len(ls.recorder.requests) == 6


# ----- Personal Access Tokens ----------------------------------------------------------------

def test_pat_is_swapped_once_and_access_token_cached(ls, make_fetcher):
    fetcher = make_fetcher(label_studio_url=ls.base, label_studio_api_key=PAT)
    for name in ("a", "b", "c"):
        assert fetcher.fetch(f"/data/upload/1/{name}.png").size == PNG_SIZE
    assert ls.recorder.refresh_bodies == [{"refresh": PAT}]
    gets = [auth for method, _, auth in ls.recorder.requests if method == "GET"]
    assert len(gets) == 3 and len(set(gets)) == 1
    assert gets[0].startswith("Bearer ") and PAT not in gets[0]
    assert all(auth is None for method, _, auth in ls.recorder.requests if method == "POST")


def test_pat_from_setup_access_token_is_swapped_too(ls, make_fetcher):
    fetcher = make_fetcher(**allow(ls))
    fetcher.fetch("/data/upload/1/a.png", hostname=ls.base, access_token=PAT)
    assert ls.recorder.refresh_count() == 1


def test_short_lived_access_token_is_renewed(ls, make_fetcher):
    ls.recorder.access_lifetime = 10  # inside the 30 s renewal margin: never reused
    fetcher = make_fetcher(label_studio_url=ls.base, label_studio_api_key=PAT)
    fetcher.fetch("/data/upload/1/a.png")
    fetcher.fetch("/data/upload/1/b.png")
    assert ls.recorder.refresh_count() == 2


def test_401_with_cached_access_token_refreshes_once_and_retries(ls, make_fetcher):
    fetcher = make_fetcher(label_studio_url=ls.base, label_studio_api_key=PAT)
    fetcher.fetch("/data/upload/1/a.png")
    ls.recorder.accepted = {f"Token {LEGACY}"}  # Label Studio forgets the access token
    assert fetcher.fetch("/data/upload/1/b.png").size == PNG_SIZE
    assert ls.recorder.refresh_count() == 2
    b_auths = [auth for _, path, auth in ls.recorder.requests if path == "/data/upload/1/b.png"]
    assert len(b_auths) == 2 and b_auths[0] != b_auths[1]


def test_401_with_fresh_access_token_is_not_retried(ls, make_fetcher):
    ls.recorder.accept_minted = False
    fetcher = make_fetcher(label_studio_url=ls.base, label_studio_api_key=PAT)
    error = fetch_error(fetcher, "/data/upload/1/a.png")
    assert error.kind == "unauthorized"
    assert ls.recorder.refresh_count() == 1
    assert ls.recorder.paths().count("/data/upload/1/a.png") == 1


def test_refused_pat_is_unauthorized(ls, make_fetcher):
    bad_pat = make_jwt({"token_type": "refresh", "jti": "revoked"})
    fetcher = make_fetcher(label_studio_url=ls.base, label_studio_api_key=bad_pat)
    error = fetch_error(fetcher, "/data/upload/1/a.png")
    assert error.kind == "unauthorized" and "Personal Access Token" in str(error)
    assert bad_pat not in str(error)


def test_concurrent_fetches_share_one_refresh(ls, make_fetcher):
    fetcher = make_fetcher(label_studio_url=ls.base, label_studio_api_key=PAT)
    results, errors = [], []

    def work(i):
        try:
            results.append(fetcher.fetch(f"/data/upload/1/t{i}.png").size)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [PNG_SIZE] * 8
    assert ls.recorder.refresh_count() == 1


# ----- errors ----------------------------------------------------------------------------------

def test_missing_token_is_unauthorized(ls, make_fetcher):
    error = fetch_error(make_fetcher(**allow(ls)), "/data/upload/1/a.png", hostname=ls.base)
    assert error.kind == "unauthorized" and "LABEL_STUDIO_API_KEY" in str(error)


def test_wrong_token_is_unauthorized_and_not_echoed(ls, make_fetcher, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "wrong-secret-token-xyz"
    error = fetch_error(make_fetcher(**allow(ls)), "/data/upload/1/a.png?token=" + secret, hostname=ls.base,
                        access_token=secret)
    assert error.kind == "unauthorized"
    assert error.url == f"{ls.base}/data/upload/1/a.png"
    ours = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("backend"))
    assert secret not in str(error) and secret not in ours
    # urllib3's own DEBUG lines quote the query string, but never the Authorization header.
    assert "Token " + secret not in caplog.text


def test_not_found_and_url_without_query(ls, make_fetcher):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    error = fetch_error(fetcher, f"{ls.base}/missing.png?X-Amz-Signature=abc&token=secret#frag")
    assert error.kind == "not_found"
    assert error.url == f"{ls.base}/missing.png"
    assert "secret" not in str(error) and "abc" not in str(error)


def test_relative_url_without_label_studio_address(make_fetcher):
    error = fetch_error(make_fetcher(), "/data/upload/1/a.png")
    assert error.kind == "bad_url" and "LABEL_STUDIO_URL" in str(error)


@pytest.mark.parametrize("url", ["", "   ", "images/a.png", "//cdn.example/a.png", "http:///a.png",
                                 "http://host:notaport/a.png"])
def test_bad_urls(make_fetcher, url):
    assert fetch_error(make_fetcher(), url).kind == "bad_url"


@pytest.mark.parametrize("url", ["s3://bucket/a.png", "gs://bucket/a.png", "azure-blob://container/a.png"])
def test_cloud_urls_explain_presigning(make_fetcher, url):
    error = fetch_error(make_fetcher(), url)
    assert error.kind == "unsupported_scheme" and "pre-signed" in str(error)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/a.png",
                                 "data:image/png;base64,iVBORw0KGgo="])
def test_other_schemes_refused(make_fetcher, url):
    assert fetch_error(make_fetcher(), url).kind == "unsupported_scheme"


def test_loopback_url_refused_before_any_request(ls, make_fetcher):
    fetcher = make_fetcher()
    for url in (f"{ls.base}/image.png", f"http://localhost:{ls.port}/image.png",
                f"http://[::ffff:127.0.0.1]:{ls.port}/image.png"):
        error = fetch_error(fetcher, url)
        assert error.kind == "forbidden_address", url
        assert "AESEMO_ALLOWED_IMAGE_HOSTS" in str(error)
    assert ls.recorder.requests == []


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_dns_rebinding_caught_at_connect(ls, make_fetcher, monkeypatch, scheme):
    # Our own lookup says "public", the connection still lands on loopback. For https the
    # check runs before the TLS handshake, so the plain-http test server is enough.
    monkeypatch.setattr(address_guard, "_resolve_addresses", lambda host, port: ["93.184.216.34"])
    error = fetch_error(make_fetcher(), f"{scheme}://127.0.0.1:{ls.port}/image.png")
    assert error.kind == "forbidden_address"
    time.sleep(0.1)
    assert ls.recorder.requests == []


def test_redirect_to_forbidden_address_refused(ls, other, make_fetcher):
    fetcher = make_fetcher(allowed_image_hosts=(f"127.0.0.1:{ls.port}",))
    error = fetch_error(fetcher, f"{ls.base}/redirect-away")
    assert error.kind == "forbidden_address" and error.url == f"{other.base}/image.png"
    assert ls.recorder.paths() == ["/redirect-away"]
    assert other.recorder.requests == []


def test_not_image(ls, make_fetcher, tmp_path):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    error = fetch_error(fetcher, f"{ls.base}/not-image")
    assert error.kind == "not_image" and "not an image" in str(error)
    assert list((tmp_path / "cache").iterdir()) == []  # failures are never cached


@pytest.mark.parametrize("path", ["/big-declared", "/big-streamed"])
def test_too_many_bytes(ls, make_fetcher, path):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",), max_image_bytes=4000)
    error = fetch_error(fetcher, ls.base + path)
    assert error.kind == "too_large" and "4000 bytes" in str(error)


def test_decompression_bomb_is_too_large(ls, make_fetcher):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    error = fetch_error(fetcher, f"{ls.base}/bomb.png")
    assert error.kind == "too_large"


def test_pixel_limit_is_too_large(ls, make_fetcher):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",), max_image_pixels=40)  # 8x6 = 48
    error = fetch_error(fetcher, f"{ls.base}/image.png")
    assert error.kind == "too_large" and "48 pixels" in str(error)


def test_decode_memory_limit_is_too_large(ls, make_fetcher):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",), max_image_decode_bytes=1_000_000)
    error = fetch_error(fetcher, f"{ls.base}/wide.png")
    assert error.kind == "too_large"
    assert "8000000 bytes" in str(error) and "limit of 1000000 bytes" in str(error)


@pytest.mark.parametrize("path", ["/slow", "/drip"])
def test_overall_timeout(ls, make_fetcher, path):
    # /drip sends a byte every 50 ms for 3 s, then closes short of its Content-Length: only a
    # deadline for the whole download, not one per read, ends it as a timeout
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",), image_timeout_s=1.0)
    error = fetch_error(fetcher, ls.base + path)
    assert error.kind == "timeout"


@pytest.mark.parametrize("step", ["image", "token refresh"])
def test_dripped_response_head_ends_at_the_deadline(make_fetcher, step):
    # One byte of the response head every 50 ms: each read gets a byte long before a per-read
    # timeout, and the whole head would take about 20 s. The fetch must end at its 1 s deadline,
    # so the server has not sent all of it when the error comes.
    with DripServer(head_bytes=400, interval=0.05) as drip:
        if step == "image":
            fetcher, url = make_fetcher(image_timeout_s=1.0, **allow(drip)), f"{drip.base}/image.png"
        else:  # the PAT's swap for an access token is the first request
            fetcher, url = make_fetcher(image_timeout_s=1.0, label_studio_url=drip.base,
                                        label_studio_api_key=PAT), "/data/upload/1/a.png"
        error = fetch_error(fetcher, url)
        sent = drip.bytes_sent()
    assert error.kind == "timeout" and "AESEMO_IMAGE_TIMEOUT" in str(error)
    assert 0 < sent < drip.total


def test_connection_refused(make_fetcher, servers):
    port = servers[0].port
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.3",))  # loopback, nothing listens there
    assert fetch_error(fetcher, f"http://127.0.0.3:{port}/image.png").kind == "connection"


# ----- tokens never leave Label Studio ----------------------------------------------------------

def test_token_not_sent_to_other_host(ls, other, make_fetcher):
    fetcher = make_fetcher(label_studio_url=ls.base, label_studio_api_key=LEGACY,
                           allowed_image_hosts=(f"127.0.0.2:{other.port}",))
    assert fetcher.fetch(f"{other.base}/image.png", hostname=ls.base, access_token="setup-token").size == PNG_SIZE
    assert other.recorder.requests == [("GET", "/image.png", None)]


def test_token_not_forwarded_on_redirect_to_other_host(ls, other, make_fetcher):
    fetcher = make_fetcher(label_studio_url=ls.base, label_studio_api_key=LEGACY,
                           allowed_image_hosts=(f"127.0.0.2:{other.port}",))
    assert fetcher.fetch("/redirect-away").size == PNG_SIZE
    assert ls.recorder.requests == [("GET", "/redirect-away", f"Token {LEGACY}")]
    assert other.recorder.requests == [("GET", "/image.png", None)]


def test_configured_key_not_sent_to_other_setup_hostname(ls, other, make_fetcher):
    # /setup named a different host than LABEL_STUDIO_URL: the operator's key stays home,
    # relative URLs go to LABEL_STUDIO_URL, and the other host gets only /setup's own token.
    fetcher = make_fetcher(label_studio_url=ls.base, label_studio_api_key=LEGACY,
                           allowed_image_hosts=(f"127.0.0.2:{other.port}",))
    assert fetcher.fetch("/data/upload/1/a.png", hostname=other.base, access_token="setup-token").size == PNG_SIZE
    assert ls.recorder.auths() == [f"Token {LEGACY}"]
    assert other.recorder.requests == []
    error = fetch_error(fetcher, f"{other.base}/data/upload/1/a.png", hostname=other.base,
                        access_token="setup-token")
    assert error.kind == "unauthorized"
    assert other.recorder.auths() == ["Token setup-token"]


@pytest.mark.parametrize("key", [LEGACY, "PAT"])
def test_operator_key_never_goes_to_a_setup_hostname(make_fetcher, key):
    # The probe's repro: LABEL_STUDIO_API_KEY set, LABEL_STUDIO_URL not, /setup names an
    # internal port. Refused before connecting; and even where the operator allows that host,
    # the key does not go there (nor a PAT's refresh call).
    key = PAT if key == "PAT" else key
    with Canary() as canary:
        fetcher = make_fetcher(label_studio_api_key=key)
        for url in ("/data/upload/1/a.png", f"{canary.base}/data/upload/1/a.png"):
            assert fetch_error(fetcher, url, hostname=canary.base).kind == "forbidden_address"
        assert canary.hits == 0
        allowed = make_fetcher(label_studio_api_key=key, **allow(canary))
        for url in ("/data/upload/1/a.png", f"{canary.base}/data/upload/1/b.png"):
            assert fetch_error(allowed, url, hostname=canary.base).kind == "not_found"
        assert canary.hits == 2 and b"/data/upload/1/b.png" in canary.received
        assert key.encode() not in canary.received and b"Authorization" not in canary.received


def test_label_studio_url_on_loopback_is_trusted_and_gets_the_key(ls, make_fetcher):
    # LABEL_STUDIO_URL is the operator's word: no allow-list needed for it, even on loopback,
    # and a /setup hostname of the same origin is that same Label Studio.
    fetcher = make_fetcher(label_studio_url=ls.base, label_studio_api_key=LEGACY)
    assert fetcher.fetch("/data/upload/1/a.png", hostname=ls.base + "/", access_token="setup").size == PNG_SIZE
    assert fetcher.fetch(f"{ls.base}/data/upload/1/b.png").size == PNG_SIZE
    assert ls.recorder.auths() == [f"Token {LEGACY}"] * 2


def test_setup_hostname_refusal_is_the_same_for_open_and_closed_ports(make_fetcher):
    # Refused before connecting: a caller learns nothing about what listens there.
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    with Canary() as canary:
        fetcher = make_fetcher()
        answers = []
        for port in (canary.port, closed_port):
            base = f"http://127.0.0.1:{port}"
            error = fetch_error(fetcher, "/data/upload/1/a.png", hostname=base, access_token="setup-token")
            answers.append((error.kind, str(error).replace(str(port), "PORT")))
        assert answers[0] == answers[1] and answers[0][0] == "forbidden_address"
        assert canary.hits == 0


def test_admin_client_sends_its_token_only_to_its_own_server(ls, other):
    client = LabelStudioClient(ls.base, LEGACY)
    client.download("/data/upload/1/a.png")
    client.download(f"{other.base}/image.png")  # e.g. a task's absolute image URL
    assert ls.recorder.auths() == [f"Token {LEGACY}"]
    assert other.recorder.requests == [("GET", "/image.png", None)]


# ----- cache -----------------------------------------------------------------------------------

def test_cache_hit_needs_no_request(ls, make_fetcher, tmp_path):
    fetcher = make_fetcher(label_studio_url=ls.base, label_studio_api_key=LEGACY)
    first = fetcher.fetch("/data/upload/1/a.png")
    entry = tmp_path / "cache" / hashlib.sha256(fetcher.cache_key("/data/upload/1/a.png").encode()).hexdigest()
    assert entry.read_bytes() == png_bytes()
    again = make_fetcher(label_studio_url=ls.base, label_studio_api_key=LEGACY).fetch("/data/upload/1/a.png")
    assert again.tobytes() == first.tobytes()
    assert fetcher.fetch("/data/upload/1/a.png").tobytes() == first.tobytes()
    assert len(ls.recorder.requests) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [entry.name]  # no temp files left


def test_cached_image_is_served_only_to_the_same_credentials(ls, make_fetcher):
    # One fetcher, so one cache, for every project, as in the service. What one project's /setup
    # token fetched is not served to a project without it: the host is asked, and refuses.
    fetcher = make_fetcher(**allow(ls))
    url = f"{ls.base}/data/upload/1/a.png"
    for _ in range(2):  # the second from the cache
        assert fetcher.fetch(url, hostname=ls.base, access_token=LEGACY).size == PNG_SIZE
    assert ls.recorder.auths() == [f"Token {LEGACY}"]
    assert fetch_error(fetcher, url).kind == "unauthorized"
    assert fetch_error(fetcher, url, hostname=ls.base, access_token="other-token").kind == "unauthorized"
    assert ls.recorder.auths() == [f"Token {LEGACY}", None, "Token other-token"]
    assert LEGACY not in fetcher.cache_key(url, hostname=ls.base, access_token=LEGACY)


def test_training_image_cache_is_served_only_to_the_same_credentials(ls, make_fetcher, tmp_path):
    fetcher = make_fetcher(**allow(ls))
    cache = training_image_cache(tmp_path / "train256", 10 ** 6)
    url = f"{ls.base}/data/upload/1/a.png"
    path = cached_training_image(fetcher, url, cache, ls.base, LEGACY, size=16)
    assert cached_training_image(fetcher, url, cache, ls.base, LEGACY, size=16) == path
    with pytest.raises(ImageFetchError) as info:
        cached_training_image(fetcher, url, cache, None, None, size=16)
    assert info.value.kind == "unauthorized"
    assert ls.recorder.auths() == [f"Token {LEGACY}", None]


def test_failures_are_not_cached(ls, make_fetcher, tmp_path):
    fetcher = make_fetcher(allowed_image_hosts=("127.0.0.1",))
    for _ in range(2):
        assert fetch_error(fetcher, f"{ls.base}/missing.png").kind == "not_found"
    assert len(ls.recorder.requests) == 2
    assert list((tmp_path / "cache").iterdir()) == []


# ----- pieces ----------------------------------------------------------------------------------

@pytest.mark.parametrize("address, forbidden", [
    ("10.0.0.1", True), ("172.16.0.1", True), ("192.168.1.1", True), ("169.254.169.254", True),
    ("127.0.0.1", True), ("0.0.0.0", True), ("100.64.0.1", True), ("224.0.0.1", True),
    ("240.0.0.1", True), ("::1", True), ("::", True), ("::ffff:127.0.0.1", True),
    ("::ffff:10.1.2.3", True), ("fe80::1%eth0", True), ("fd00::1", True), ("ff02::1", True),
    ("8.8.8.8", False), ("1.1.1.1", False), ("2606:4700:4700::1111", False), ("::ffff:8.8.8.8", False),
])
def test_address_classifier(address, forbidden):
    assert is_forbidden_address(address) is forbidden


U, H = "http://label-studio:8080", "http://elsewhere.example"


@pytest.mark.parametrize("configured, key, hostname, token, expected", [
    # the operator's key goes only to LABEL_STUDIO_URL
    (None, "K", H, None, {H: (None, False)}),
    (None, "K", H, "T", {H: ("T", False)}),
    (U, "K", H, "T", {U: ("K", True), H: ("T", False)}),
    (U, None, H, "T", {U: (None, True), H: ("T", False)}),
    # a /setup hostname of LABEL_STUDIO_URL's origin is that Label Studio; the key wins there
    (U, "K", U + "/", "T", {U: ("K", True)}),
    (U, None, "HTTP://Label-Studio:8080", "T", {U: ("T", True)}),
    (U, "K", None, None, {U: ("K", True)}),
    (None, "K", None, None, {}),
])
def test_which_token_goes_to_which_host(configured, key, hostname, token, expected):
    studios = ls_auth.label_studios(configured, key, hostname, token)
    assert {s.base: (s.token, s.configured) for s in studios.values()} == expected
    first = ls_auth.primary(studios)
    assert (first.base if first else None) == (configured or hostname)  # relative URLs: LABEL_STUDIO_URL first
    assert ls_auth.token_for(H + "/x", studios) == (token if hostname == H else None)
    assert ls_auth.token_for("http://label-studio:8081/x", studios) is None  # another port, another origin


@pytest.mark.parametrize("url, ok", [
    ("http://label-studio:8080", True), ("https://labels.example.org/", True), ("http://[::1]:8080/ls", True),
    ("javascript:alert(document.domain)//", False), ("JAVASCRIPT://x.example/%0aalert(1)", False),
    ("data:text/html,x", False), ("ftp://x.example", False), ("//x.example", False), ("http://", False),
    ("http://user:pw@x.example", False), ("http://x.example:99999", False), ("http://x.example/?q", False),
    ("http://x.example/#f", False), ('http://x.example/"><script>', False), ("http://x.example/\n", False),
    ("http://x .example", False), (5, False),
    (None, False),
])
def test_label_studio_address_check(url, ok):
    assert ls_auth.is_http_url(url) is ok


def test_public_url_strips_secrets():
    assert public_url("https://user:pw@Host.example:8443/a/b.png?sig=1#x") == "https://host.example:8443/a/b.png"
    assert public_url("/data/local-files/?d=images/a.png") == "/data/local-files/"


def test_error_kind_attribute_base_class_and_pickling(make_fetcher):
    import pickle
    from model.errors import AesemoError
    error = fetch_error(make_fetcher(), "ftp://x/a.png?k=v")
    assert isinstance(error, AesemoError) and error.kind == "unsupported_scheme"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.kind, copy.url, str(copy)) == (error.kind, "ftp://x/a.png", str(error))
