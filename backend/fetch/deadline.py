"""One fetch's time limit, held whatever the pace of the server.

requests' `timeout=` bounds each socket read, not their sum: a server that sends a byte before
each read would time out (response headers dripped one byte at a time) keeps a fetch going as
long as it likes. So each socket a fetch opens is watched here, and at the deadline a timer
thread shuts them all down: whatever read is blocked on one of them (TLS handshake, status line,
headers, body, the token refresh) returns at once and the fetch reports a timeout.

A watchdog rather than a per-read timeout shrunk to the time left: http.client reads headers
through a file object over the socket, and TLS wraps the socket after it connects, so neither
leaves a place to change the timeout before each read. shutdown() works on plain and TLS sockets
alike and, unlike close(), wakes a read blocked in another thread.
"""
from __future__ import annotations

import itertools
import socket
import threading
import time


class Deadline:
    """`seconds` from now. Use as a context manager: leaving it stops the timer and lets go of
    the sockets it watches."""

    def __init__(self, seconds: float):
        self._at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._watched: dict[int, socket.socket] = {}
        self._handles = itertools.count()
        self._fired = False
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        with self._lock:
            watched, self._watched = list(self._watched.values()), {}
        for sock in watched:
            sock.close()

    def remaining(self) -> float:
        return self._at - time.monotonic()

    def expired(self) -> bool:
        return self._fired or self.remaining() <= 0

    def watch(self, sock: socket.socket) -> int:
        """Shut `sock`'s connection down at the deadline (at once if it has passed); the handle
        is for `forget`. A duplicate descriptor is kept: it still reaches the connection once TLS
        has taken the original over, and it cannot be reused by another socket while we hold it."""
        own = sock.dup()
        with self._lock:
            handle = next(self._handles)
            self._watched[handle] = own
            if self._fired:
                _shutdown(own)
        return handle

    def forget(self, handle: int) -> None:
        """The connection was closed: stop watching it (and let its descriptor go)."""
        with self._lock:
            own = self._watched.pop(handle, None)
        if own is not None:
            own.close()

    def _expire(self) -> None:
        with self._lock:
            self._fired = True
            for own in self._watched.values():
                _shutdown(own)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # not connected any more
        pass
