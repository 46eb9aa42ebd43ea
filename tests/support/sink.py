"""A real HTTP server on 127.0.0.1 for testing destinations: it records what it gets and
misbehaves on request.

Use it as a context manager (it is always stopped, even when the test fails)::

    from tests.support.sink import Reply, Sink

    with Sink() as sink:                       # listening on sink.url, a free port
        sink.script(Reply(500), Reply(200))    # the next two requests, in order
        ...                                    # then sink.default (200) for the rest
        assert sink.delivered[0].json["messageId"] == "m-1"

or as a fixture: ``yield from sink_fixture()`` inside a ``@pytest.fixture`` function.

What it can do, per request (``Reply``) or for every request:

- answer any ``status``, with ``headers`` (``Reply(429, headers={"Retry-After": "1"})``);
- be slow: ``Reply(delay=2.0)`` sleeps before answering;
- ``Reply(drop=True)``: send the status line and half the announced body, then close
  the connection (the client sees the connection closed mid-response);
- ``sink.fail_rate = 0.3``: answer 500 to about 30 % of requests at random;
- vanish: ``sink.stop()`` closes the listening socket and every open connection
  (clients get "connection refused"); ``sink.start()`` listens again on the same port.

``sink.requests`` holds every request that arrived (``Recorded``: method, path, headers,
body, json, status answered); ``sink.delivered`` only those answered 2xx (not dropped),
i.e. what a destination may count as delivered. Both are safe to read from the test thread.

``SilentServer`` is a listening socket that accepts connections and never answers,
counting them: for circuit breakers and read timeouts.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator


@dataclass(frozen=True)
class Reply:
    """How to answer one request."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    complete: bool = False

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops the SYNs of a replay opening eight or
    # more connections at once: each would wait a second for the retransmit.
    request_queue_size = 128
    sink: Sink

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and left is part of the tests, not an error


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as destinations use it
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body are two writes: without this, Nagle's algorithm and the
        # client's delayed ACK add 40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sink._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sink._closed(self.connection)

    def _handle(self) -> None:
        sink = self.server.sink
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        recorded = Recorded(self.command, self.path, {k: v for k, v in self.headers.items()}, body)
        sink._record(recorded)
        if len(body) < length:
            # The client went away mid-request (a worker killed while sending): no
            # server would take a body shorter than announced, so neither does the sink.
            self.close_connection = True
            return
        reply = sink._next_reply()
        if reply.delay:
            time.sleep(reply.delay)
        recorded.status = reply.status
        payload = reply.body or (b"ok" if reply.status < 300 else b"error")
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        if reply.drop:
            self.send_header("Content-Length", str(len(payload) + 100))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_header("Content-Length", str(len(payload)))
        # Marked before the answer goes out: once the client has it, so has the test.
        recorded.complete = True
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    do_POST = do_PUT = do_GET = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # keep test output clean


class Sink:
    """An HTTP server in a thread; see the module docstring."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        # ``host``: another local address only for a network namespace the test created.
        self.host = host
        self.port = port
        self.default = Reply()
        self.fail_rate = 0.0
        self._script: list[Reply] = []
        self._requests: list[Recorded] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._random = random.Random(1234)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- controls -------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, then with ``default``."""
        with self._lock:
            self._script.extend(replies)

    def start(self) -> Sink:
        server = _Server((self.host, self.port), _Handler)
        server.sink = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection; ``start()`` comes back on the same port."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        assert self._thread is not None
        self._thread.join(5)
        # Let handler threads notice their sockets are gone before the port is reused.
        deadline = time.monotonic() + 5
        while self._connections and time.monotonic() < deadline:
            time.sleep(0.01)

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what arrived ------------------------------------------------------------------

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    @property
    def delivered(self) -> list[Recorded]:
        return [r for r in self.requests if r.complete and 200 <= r.status < 300]

    def delivered_message_ids(self) -> list[str]:
        return [r.json["messageId"] for r in self.delivered]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Recorded]:
        """Wait until at least ``count`` requests have arrived; returns them all."""
        deadline = time.monotonic() + timeout
        while len(self._requests) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.requests

    # -- called from handler threads ---------------------------------------------------

    def _next_reply(self) -> Reply:
        with self._lock:
            if self._script:
                return self._script.pop(0)
            if self.fail_rate and self._random.random() < self.fail_rate:
                return Reply(500)
            return self.default

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self._requests.append(recorded)

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)


def sink_fixture() -> Iterator[Sink]:
    """The body of a pytest fixture: ``yield from sink_fixture()``."""
    with Sink() as sink:
        yield sink


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never reads or answers; counts them.

    Requests to it hang until the client's read timeout: the worst destination there is.
    """

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(128)
        self.port = self._socket.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self._socket.settimeout(0.05)
        while not self._stopping.is_set():
            try:
                connection, _ = self._socket.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(connection)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._socket.close()
        for connection in self._held:
            connection.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
