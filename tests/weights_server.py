"""A loopback HTTP server of generated weight files, standing for download.pytorch.org.

`add(name, body)` serves `body` at `/models/<name>`; `truncate=True` announces the whole length
but sends half and closes, as a dropped transfer does. `requests` counts every request."""
from __future__ import annotations

import hashlib
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


def weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def hashed_name(stem: str, body: bytes) -> str:
    """torchvision's file naming: `<stem>-<first 8 hex digits of the sha256>.pth` (torch.hub checks it)."""
    return f"{stem}-{hashlib.sha256(body).hexdigest()[:8]}.pth"


class WeightsServer:
    def __init__(self):
        self.files: dict[str, tuple[bytes, bool]] = {}
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                name = self.path.rsplit("/", 1)[-1]
                if name not in server.files:
                    self.send_error(404)
                    return
                body, truncate = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if truncate else body)
                self.close_connection = True

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/models/{name}"

    def add(self, name: str, body: bytes, truncate: bool = False) -> str:
        self.files[name] = (body, truncate)
        return self.url(name)

    def __enter__(self) -> WeightsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
