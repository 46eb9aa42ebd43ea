"""A raw-socket HTTP server on 127.0.0.1 that answers the way no library expects.

``TrickleServer(interval=2.0)`` sends its whole answer, status line and headers
included, one byte every ``interval`` seconds: a per-receive read timeout never
fires on it. ``TrickleServer(body_size=10 * 1024 * 1024)`` answers at once with a
body of that size, sent in chunks as fast as the client reads; ``bytes_sent``
says how much of it the client took before it closed the connection.

Always used as a context manager: the listening socket and every connection are
closed when the block ends, even when a test fails.
"""

from __future__ import annotations

import socket
import threading
import time

CHUNK = 64 * 1024


class TrickleServer:
    def __init__(self, *, interval: float = 2.0, status: int = 200, body: bytes = b"ok", body_size: int = 0) -> None:
        self.interval = interval
        self.status = status
        self.body = body
        self.body_size = body_size
        self.requests = 0
        self.bytes_sent = 0
        self.finished_bodies = 0
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TrickleServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        for thread in list(self._threads):
            thread.join(5)
        assert self._listener is not None
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                connection.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._lock:
                self._connections.append(connection)
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            thread.start()
            with self._lock:
                self._threads.append(thread)

    def _read_request(self, connection: socket.socket) -> bool:
        data = b""
        connection.settimeout(0.05)
        while b"\r\n\r\n" not in data:
            if self._stopping.is_set():
                return False
            try:
                chunk = connection.recv(65536)
            except (TimeoutError, socket.timeout):
                continue
            if not chunk:
                return False
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length and not self._stopping.is_set():
            try:
                chunk = connection.recv(65536)
            except (TimeoutError, socket.timeout):
                continue
            if not chunk:
                return False
            rest += chunk
        self.requests += 1
        return True

    def _serve(self, connection: socket.socket) -> None:
        try:
            while self._read_request(connection):
                if self.body_size:
                    self._send_huge(connection)
                else:
                    self._send_trickling(connection)
        except OSError:
            pass  # the client gave up and closed: what these tests expect
        finally:
            connection.close()

    def _send_trickling(self, connection: socket.socket) -> None:
        answer = (
            f"HTTP/1.1 {self.status} Whatever\r\nContent-Type: text/plain\r\nContent-Length: {len(self.body)}\r\n\r\n".encode() + self.body
        )
        for index in range(len(answer)):
            connection.sendall(answer[index : index + 1])
            self.bytes_sent += 1
            if self._stopping.wait(self.interval):
                return

    def _send_huge(self, connection: socket.socket) -> None:
        head = f"HTTP/1.1 {self.status} Big\r\nContent-Type: text/plain\r\nContent-Length: {self.body_size}\r\n\r\n".encode()
        connection.settimeout(5.0)
        connection.sendall(head)
        left = self.body_size
        chunk = b"x" * CHUNK
        while left > 0 and not self._stopping.is_set():
            piece = chunk[: min(CHUNK, left)]
            connection.sendall(piece)
            self.bytes_sent += len(piece)
            left -= len(piece)
            # Slow enough that the socket buffers cannot swallow the whole body at once.
            time.sleep(0.005)
        if left == 0:
            self.finished_bodies += 1
