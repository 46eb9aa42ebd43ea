"""HTTP connections whose every wait ends at one wall-clock deadline.

A socket timeout bounds one ``recv``: a server that sends its answer a byte every two
seconds never trips a five-second read timeout and holds the caller for as long as it
likes (urllib3 and http.client only ever set per-operation timeouts). Here the socket
of each connection is wrapped so that, before every receive, its timeout is set to
what is left until the deadline of the current delivery, and a receive after the
deadline fails at once. Status line, headers and body are all read through it.

Connecting is bounded by the connect timeout the caller passes (what is left of the
budget); sending a small JSON body is one ``sendall`` under the socket's timeout.
"""

from __future__ import annotations

import io
import socket
import time
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection


class Deadline:
    """The instant (``time.monotonic()``) the current delivery of one thread must end by."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = float("inf")

    def start(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()


class _DeadlineReader(io.RawIOBase):
    """The raw stream ``http.client`` reads a response from, one deadline for all of it."""

    def __init__(self, sock: Any, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline.remaining()
        if remaining <= 0:
            raise socket.timeout("deadline reached while reading the response")
        self._sock.settimeout(remaining)
        return int(self._sock.recv_into(buffer))


class _DeadlineSocket:
    """A connected socket (plain or TLS) whose binary read stream obeys ``deadline``."""

    def __init__(self, sock: Any, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str = "r", buffering: int | None = None, **kwargs: Any) -> Any:
        if mode == "rb":
            return io.BufferedReader(_DeadlineReader(self._sock, self._deadline), io.DEFAULT_BUFFER_SIZE)
        return self._sock.makefile(mode, buffering, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class DeadlineHTTPConnection(HTTPConnection):
    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self._deadline)


class DeadlineHTTPSConnection(HTTPSConnection):
    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self._deadline)


deadline_connection_classes: dict[str, type[HTTPConnection]] = {
    "http": DeadlineHTTPConnection,
    "https": DeadlineHTTPSConnection,
}
