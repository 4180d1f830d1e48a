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
