"""A loopback TCP listener that records every connection and every byte sent to it.

It stands for a service that must never be reached (an internal port named in /setup): a test
asserts `hits == 0`, or that a secret is not in `received`. It answers each connection with an
HTTP 404 once the request head has arrived, so a client that does reach it gets an ordinary
answer instead of hanging. Only ever binds an address inside 127.0.0.0/8.
"""
from __future__ import annotations

import ipaddress
import socket
import threading

from net import wait_for


class Canary:
    def __init__(self, host: str = "127.0.0.1"):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"test servers bind loopback addresses only, not {host}")
        self._sock = socket.create_server((host, 0))
        self._sock.settimeout(0.2)
        self.host, self.port = host, self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._hits = 0
        self._handled = 0
        self._received = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def hits(self) -> int:
        with self._lock:
            return self._hits

    @property
    def received(self) -> bytes:
        with self._lock:
            return bytes(self._received)

    def settle(self, timeout_s: float = 10.0) -> None:
        """Wait until every connection accepted so far has been read to its end (or its head)."""
        wait_for(self._all_handled, timeout_s, interval=0.01, what="the canary's open connections to end")

    def _all_handled(self) -> bool:
        with self._lock:
            return self._handled == self._hits

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._hits += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2.0)
            head = bytearray()
            try:
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                    with self._lock:
                        self._received += chunk
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            finally:
                with self._lock:
                    self._handled += 1

    def __enter__(self) -> Canary:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
