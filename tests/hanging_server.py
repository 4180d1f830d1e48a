"""A loopback TCP server that accepts connections and never answers: an image host that hangs.

It counts the connections it holds, so a test can wait until a client is stuck on it (ordering,
not timing). `release()` closes them all, and every later one as soon as it comes, so whatever
waits on it fails at once. `DripServer` is the same host answering a byte at a time.
"""
from __future__ import annotations

import ipaddress
import socket
import threading
import time


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
                    self._serve(conn)
                    continue
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        """What a held connection gets: nothing, it hangs."""

    def holding(self) -> int:
        with self.lock:
            return len(self.held)

    def release(self) -> None:
        with self.lock:
            held, self.held, self.released = self.held, [], True
        for conn in held:
            conn.close()

    def __enter__(self) -> HangingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        # shutdown, not just close: a listener closed while accept() waits on it stays listening
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.release()



class DripServer(HangingServer):
    """A loopback HTTP server that answers each request with its response head one byte at a
    time, `interval` seconds apart: a host slow enough that every read of a client gets a byte
    before its per-read timeout, so only a deadline for the whole fetch ends it.

    Each connection gets at most `total` bytes (one full answer), then is closed: the server
    stops by itself. It also stops as soon as the client hangs up, or the server is closed.
    `bytes_sent()` counts the bytes sent on all connections.
    """

    def __init__(self, host: str = "127.0.0.1", head_bytes: int = 400, interval: float = 0.05):
        super().__init__(host)
        padding = b"X-Padding: " + b"a" * max(head_bytes, 1) + b"\r\n"
        self.response = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n" + padding + b"Content-Length: 0\r\n\r\n"
        self.total = len(self.response)
        self.interval = interval
        self.sent = 0

    @property
    def base(self) -> str:
        return self.url("")

    def _serve(self, conn: socket.socket) -> None:
        threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            _read_request_head(conn)
            for i in range(self.total):
                time.sleep(self.interval)
                if self.released:
                    return
                conn.sendall(self.response[i:i + 1])
                with self.lock:
                    self.sent += 1
        except OSError:  # the client hung up, as it should (or release() closed it)
            return
        finally:
            conn.close()

    def bytes_sent(self) -> int:
        with self.lock:
            return self.sent


def _read_request_head(conn: socket.socket, limit: int = 64 * 1024) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and len(head) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        head += chunk
    return head
