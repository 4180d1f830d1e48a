"""A small real HTTP server on a loopback address that serves generated test images.

Paths it answers (GET):
    /img/<n>.png        a 32x24 PNG whose colour is derived from <n> (so tasks are distinguishable)
    /big.png            a 256x256 PNG of noise (tens of KB; for byte / pixel limits)
    /text.txt           text/plain, not an image
    /fake.png           image/png Content-Type, but the bytes are not an image
    /auth.png           401 with WWW-Authenticate unless "Authorization: Basic dTpw" (u:p) is sent
    /redirect?to=<url>  302 to <url>
    a path in `files`   those bytes, as image/png (`add_png` puts a PNG of one colour there)
    anything else       404

Every request is recorded (method, path, Authorization header) so tests can prove that
nothing reached a server. Only ever binds an address inside 127.0.0.0/8.
"""
from __future__ import annotations

import io
import ipaddress
import random
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image

IMAGE_SIZE = (32, 24)


def color_for(n: int) -> tuple[int, int, int]:
    return ((n * 53) % 256, (n * 97 + 40) % 256, (n * 193 + 80) % 256)


def png_bytes(size=IMAGE_SIZE, color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(size=(256, 256), seed=0) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # The fetcher hangs up early on purpose (a body over the byte limit, a refused redirect):
        # the broken pipe that leaves in a handler thread is expected, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class ImageServer:
    def __init__(self, host: str = "127.0.0.1"):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"test servers bind loopback addresses only, not {host}")
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []
        self.big = noise_png()
        self.files: dict[str, bytes] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                with server.lock:
                    server.requests.append(("GET", self.path, self.headers.get("Authorization")))
                parts = urlsplit(self.path)
                path = parts.path
                if path in server.files:
                    return self._send(200, server.files[path], "image/png")
                if path.startswith("/img/") and path.endswith(".png") and path[5:-4].isdigit():
                    return self._send(200, png_bytes(color=color_for(int(path[5:-4]))), "image/png")
                if path == "/big.png":
                    return self._send(200, server.big, "image/png")
                if path == "/text.txt":
                    return self._send(200, b"hello, I am not an image\n", "text/plain")
                if path == "/fake.png":
                    return self._send(200, b"<html>definitely not a png</html>", "image/png")
                if path == "/auth.png":
                    if self.headers.get("Authorization") == "Basic dTpw":
                        return self._send(200, png_bytes(), "image/png")
                    return self._send(401, b"auth required", "text/plain",
                                      {"WWW-Authenticate": 'Basic realm="images"'})
                if path == "/redirect":
                    target = parse_qs(parts.query).get("to", [""])[0]
                    return self._send(302, b"", "text/plain", {"Location": target})
                return self._send(404, b"not found", "text/plain")

            def _send(self, code, body, content_type, headers=None):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = _QuietServer((host, 0), Handler)
        self.host = host
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.netloc}{path}"

    def add_png(self, name: str, colour: tuple[int, int, int]) -> str:
        """The URL of a new 64x48 PNG of `colour`, served at /img/<name>.png."""
        path = f"/img/{name}.png"
        self.files[path] = png_bytes((64, 48), colour)
        return self.url(path)

    def paths(self) -> list[str]:
        with self.lock:
            return [path for _, path, _ in self.requests]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
