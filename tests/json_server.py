"""What the tests' loopback fakes of a JSON API (Label Studio's in test_refresh and
test_annotator_names, an ML backend's in e2e/test_label_studio_harness) share: a handler that
answers JSON, and the server on 127.0.0.1 that runs it in a daemon thread."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler that answers JSON and logs nothing (a test's output stays its own)."""

    def log_message(self, *args):
        pass

    def answer(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def json_body(self):
        """The request's JSON body; None when it has none."""
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")


class LoopbackServer:
    """`handler` served on 127.0.0.1, on a free port, until close(); `url` is its address."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
