"""The gunicorn worker of `aesemo serve`: waitress reads every request whole, then a thread runs it.

gunicorn's own threaded worker gives a connection to one of its threads as soon as the first byte
arrives, and that thread then blocks while the headers and body come in: five or six clients that
send a byte every two seconds held all of them, and `/health` stopped answering (before any
credentials were checked). Waitress reads requests on one non-blocking loop and hands a thread only
a complete one: headers and body buffered (in memory, or in a temporary file past 512 KiB). A slow
or idle client costs a socket and a buffer, never a thread.

gunicorn stays the process manager: `--workers` processes, the heartbeat (the loop below calls
`notify`), graceful and quick shutdown on its signals, the access log in its format, the
`child_exit` hook for the metrics files and the control socket. Per connection this worker adds
what waitress lacks: a deadline for a whole request to arrive, an idle timeout between requests
(gunicorn's `keepalive`), the refusal of requests framed two ways at once (request smuggling), and
a lingering close after an error answer, so that a client still sending its body reads the answer.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import socket
import time
from datetime import timedelta

from gunicorn.workers import base
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

from backend.http.app import MAX_BODY_BYTES, SecurityHeaders
from backend.http.policy import loggable

MAX_HEADER_BYTES = 64 * 1024
MAX_CONNECTIONS = 1000  # per worker process; also kept well under its open-file limit
_LOOP_WAIT_S = 0.5  # how late the loop may notice a stop signal or a deadline
# after an error answer, what the client still sends is read and dropped (see _Channel), up to this
LINGER_MAX_BYTES = 2 * MAX_BODY_BYTES
LINGER_MIN_S = 2.0  # a lingering close waits at least this long, even past the read timeout
_LINGER_RECV_BYTES = 256 * 1024


class BufferedWorker(base.Worker):
    def run(self):
        # "Task queue depth is N" for every request that waits for a free thread: normal under load
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        socket_map: dict = {}
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(self.cfg.threads)
        app, adj = _access_logged(self.wsgi, self.log), self._adjustments()
        servers = [_Server(app, map=socket_map, _sock=listener.sock, dispatcher=dispatcher, adj=adj,
                           bind_socket=False, sockinfo=_sockinfo(listener.sock)) for listener in self.sockets]
        read_timeout_s = self.app.settings.read_timeout_s
        for server in servers:
            server.read_timeout_s = read_timeout_s
        try:
            self._serve(socket_map)
            self._drain(servers, socket_map)
        finally:
            dispatcher.shutdown(cancel_pending=True, timeout=1)
            wasyncore.close_all(socket_map)

    def _adjustments(self) -> Adjustments:
        return Adjustments(
            threads=self.cfg.threads, backlog=self.cfg.backlog, ident="aesemo",
            channel_timeout=self.cfg.keepalive, cleanup_interval=1,
            max_request_header_size=MAX_HEADER_BYTES,
            max_request_body_size=MAX_BODY_BYTES + 1,  # waitress refuses a body of this size or more
            connection_limit=_connection_limit(), asyncore_use_poll=True,
            # served under a proxy's sub-path: as gunicorn's own workers, from the environment
            url_prefix=os.environ.get("SCRIPT_NAME", ""))

    def _serve(self, socket_map: dict) -> None:
        beat = 0.0
        while self.alive:
            now = time.monotonic()
            if now - beat >= 1.0:
                self.notify()
                beat = now
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    return
            wasyncore.poll2(_LOOP_WAIT_S, socket_map)

    def _drain(self, servers: list, socket_map: dict) -> None:
        """gunicorn's graceful stop: take no new connections, let the requests already handed to a
        thread finish and their answers go out, for up to graceful_timeout. Connections idle or
        still sending a request are closed: no thread has seen them yet."""
        for server in servers:
            # this process's copy of the listening socket: with it open, the kernel would go on
            # queueing connections that nobody accepts (the trigger stays: the threads need it)
            wasyncore.dispatcher.close(server)
        running = sum(len(channel.requests) for channel in _channels(servers))
        self.log.info("graceful stop: %d request(s) in flight", running)
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while time.monotonic() < deadline:
            self.notify()
            busy = False
            for channel in _channels(servers):
                if channel.requests or channel.total_outbufs_len:
                    busy = True
                elif not channel.will_close:
                    channel.will_close = True
            if not busy:
                return
            wasyncore.poll2(0.1, socket_map)


def _channels(servers: list) -> list:
    return [channel for server in servers for channel in list(server.active_channels.values())]


def _sockinfo(sock) -> tuple:
    return sock.family, sock.type, sock.proto, sock.getsockname()


def _connection_limit() -> int:
    """Past its open-file limit a process could not even open an image or a Redis connection."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(16, min(MAX_CONNECTIONS, soft // 2))


class _Parser(HTTPRequestParser):
    def __init__(self, adj):
        super().__init__(adj)
        self.started = time.time()  # waitress keeps its channel times in time.time() too

    def parse_header(self, header_plus):
        super().parse_header(header_plus)
        # waitress answers any HTTP/x.y as if it were 1.0; a version we do not speak is the
        # client's mistake, and says so (a request line without a version is HTTP/0.9's form)
        if self.version not in ("1.0", "1.1"):
            raise ParsingError(f"HTTP version {self.version or '0.9'} is not supported; use HTTP/1.1")
        self._refuse_ambiguous_framing()

    def _refuse_ambiguous_framing(self):
        """RFC 9112 6.1: a request with both Transfer-Encoding and Content-Length, or an HTTP/1.0
        one with Transfer-Encoding, has framing that a proxy in front may read otherwise than this
        server, which lets a request hidden in the body run as the next one (request smuggling).
        Refused (400), and the connection closed after the answer (_JsonErrorTask)."""
        if self.chunked and "CONTENT_LENGTH" in self.headers:
            raise ParsingError("Content-Length and Transfer-Encoding: chunked together are refused; send one")
        if self.version == "1.0" and "TRANSFER_ENCODING" in self.headers:
            raise ParsingError("Transfer-Encoding is not allowed in HTTP/1.0; use HTTP/1.1 or Content-Length")


class _JsonErrorTask(ErrorTask):
    """Waitress's own refusals (headers or body too large, malformed request) as the app's JSON."""

    def execute(self):
        error = self.request.error
        message = {413: f"body over {MAX_BODY_BYTES} bytes",
                   431: f"request headers over {MAX_HEADER_BYTES} bytes"}.get(error.code,
                                                                            f"{error.reason}: {error.body}")
        body = (json.dumps({"error": message}) + "\n").encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers += [("Content-Type", "application/json"), *SecurityHeaders.HEADERS]
        self.channel.linger_until = self.request.started + self.channel.server.read_timeout_s
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    """Waitress's channel, with a lingering close after an error answer. Waitress answers a
    refusal (413, 431, 400) as soon as it knows, while the client may still be sending the body;
    closing then, with its bytes unread, makes the kernel reset the connection, which destroys the
    answer before the client reads it. So the channel half-closes (the client reads the answer and
    an end), then reads and drops what still arrives until the client closes, LINGER_MAX_BYTES have
    come, or the read timeout counted from the request's first byte (at least LINGER_MIN_S) is
    over (RFC 9112 9.6). Nothing of it is parsed: no request after a refused one runs."""

    parser_class = _Parser
    error_task_class = _JsonErrorTask
    linger_until = None  # set by an error answer: a close then lingers, until this time.time()
    lingering = False
    lingered_bytes = 0

    def handle_close(self):
        if self.linger_until is None or self.lingering or not self._half_close():
            super().handle_close()
            return
        self.lingering = True
        self.linger_until = max(self.linger_until, time.time() + LINGER_MIN_S)
        self.will_close = self.close_when_flushed = False
        with self.requests_lock:
            self.request = None

    def _half_close(self) -> bool:
        try:
            self.socket.shutdown(socket.SHUT_WR)
            return True
        except (OSError, AttributeError):  # the client is gone already, or the socket closed
            return False

    def readable(self):
        return self.lingering or super().readable()

    def handle_read(self):
        if not self.lingering:
            super().handle_read()
            return
        try:
            data = self.recv(_LINGER_RECV_BYTES)  # b"" at the client's end: recv closes the channel
        except OSError:
            data = b""
            super().handle_close()
        self.lingered_bytes += len(data)
        if data and self.lingered_bytes >= LINGER_MAX_BYTES:
            super().handle_close()


class _Server(TcpWSGIServer):
    channel_class = _Channel
    read_timeout_s = 30.0

    def maintenance(self, now):
        """Close (waitress runs this every cleanup_interval) a connection whose request has not
        arrived whole within read_timeout_s since its first byte, whatever its pace, and one idle
        for channel_timeout between requests. A request being answered is left alone."""
        for channel in list(self.active_channels.values()):
            if channel.requests:
                continue
            if channel.lingering:
                expired = now > channel.linger_until
            elif channel.request is not None:
                expired = now - channel.request.started > self.read_timeout_s
            elif channel.total_outbufs_len:  # an answer the client is slow to read
                expired = now - channel.last_activity > self.read_timeout_s
            else:
                expired = now - channel.last_activity > self.adj.channel_timeout
            if expired:
                channel.will_close = True


class _Answer:
    """What gunicorn's access log reads of a response."""

    def __init__(self, status: str, headers: list):
        self.status, self.headers, self.sent = status, headers, 0


def _access_logged(app, log):
    """The app, writing one access-log line through gunicorn's logger (its format, its target)
    once each answer has been sent."""

    def logged(environ, start_response):
        started = time.perf_counter()
        environ.setdefault("RAW_URI", environ.get("REQUEST_URI", ""))  # gunicorn's log reads it
        answer = _Answer("500", [])

        def start(status, headers, exc_info=None):
            answer.status, answer.headers = status, headers
            return start_response(status, headers, exc_info)

        def done():
            log.access(answer, (), _logged_environ(environ), timedelta(seconds=time.perf_counter() - started))

        return _Body(app(environ, start), answer, done)

    return logged


def _logged_environ(environ: dict) -> dict:
    """The environ as the access log reads it: the path as the app decodes it (UTF-8; WSGI holds
    its bytes as latin-1 text), escaped so that a %0a in it cannot start a forged line."""
    path = environ.get("PATH_INFO", "")
    try:
        path = path.encode("latin-1").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # not WSGI's latin-1 text after all: escaped as it is
        pass
    return {**environ, "PATH_INFO": loggable(path)}


class _Body:
    def __init__(self, chunks, answer: _Answer, on_close):
        self.chunks, self.answer, self.on_close = chunks, answer, on_close

    def __iter__(self):
        for chunk in self.chunks:
            self.answer.sent += len(chunk)
            yield chunk

    def close(self):
        try:
            if hasattr(self.chunks, "close"):
                self.chunks.close()
        finally:
            self.on_close()
