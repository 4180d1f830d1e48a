"""A loopback TCP server that accepts connections and never answers: an image host that hangs.

It counts the connections it holds, so a test can wait until a client is stuck on it (ordering,
not timing). `release()` closes them all, and every later one as soon as it comes, so whatever
waits on it fails at once.
"""
from __future__ import annotations

import ipaddress
import socket
import threading


class HangingServer:
    def __init__(self, host: str = "127.0.0.1"):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"test servers bind loopback addresses only, not {host}")
        self.listener = socket.create_server((host, 0), backlog=128)
        self.host, self.port = host, self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.held: list[socket.socket] = []
        self.accepted = 0
        self.released = False
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.netloc}{path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed by __exit__
                return
            with self.lock:
                self.accepted += 1
                if not self.released:
                    self.held.append(conn)
                    continue
            conn.close()

    def holding(self) -> int:
        with self.lock:
            return len(self.held)

    def release(self) -> None:
        with self.lock:
            held, self.held, self.released = self.held, [], True
        for conn in held:
            conn.close()

    def __enter__(self) -> "HangingServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        # shutdown, not just close: a listener closed while accept() waits on it stays listening
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.release()


class DripServer:
    """A loopback HTTP server that answers each request with its response head one byte at a
    time, `interval` seconds apart: a host slow enough that every read of a client gets a byte
    before its per-read timeout, so only a deadline for the whole fetch ends it.

    Each connection gets at most `len(self.response)` bytes, then is closed: the server stops by
    itself. It also stops sending as soon as the client hangs up, or when the server is closed.
    `sent` counts the bytes sent on all connections, `total` is what one full answer takes.
    """

    def __init__(self, host: str = "127.0.0.1", head_bytes: int = 400, interval: float = 0.05):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"test servers bind loopback addresses only, not {host}")
        padding = b"X-Padding: " + b"a" * max(head_bytes, 1) + b"\r\n"
        self.response = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n" + padding + b"Content-Length: 0\r\n\r\n"
        self.total = len(self.response)
        self.interval = interval
        self.listener = socket.create_server((host, 0))
        self.host, self.port = host, self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.sent = 0
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed by __exit__
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                _read_request_head(conn)
                for i in range(self.total):
                    if self.stopped.wait(self.interval):
                        return
                    conn.sendall(self.response[i:i + 1])
                    with self.lock:
                        self.sent += 1
            except OSError:  # the client hung up, as it should
                return

    def bytes_sent(self) -> int:
        with self.lock:
            return self.sent

    def __enter__(self) -> "DripServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def _read_request_head(conn: socket.socket, limit: int = 64 * 1024) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and len(head) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        head += chunk
    return head
