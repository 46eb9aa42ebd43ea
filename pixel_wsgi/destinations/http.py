"""The common part of HTTP destinations: keep-alive connections, deadlines and status mapping.

Each destination keeps one connection per origin, per thread (gthread workers share
the destination object; a connection serves one request at a time) and per process:
the first ``deliver`` in a forked gunicorn worker opens new ones, so no socket opened
before the fork is ever shared. Nothing is opened in the constructor. A thread's
connections are closed when the thread ends (``PerThread``), so a server that starts a
thread per request does not leak them.

The connections are ``http.client``'s, wrapped so that one wall-clock deadline bounds
connecting, sending, the status line, the headers and the body (``deadline.py``): a
server that answers a byte every few seconds cannot hold a request past it. TLS is
verified against certifi's bundle (what requests uses), with the host name checked;
proxies, CA bundles and ``.netrc`` are never read from the environment. Headers and
the ``Authorization`` value are computed once, in ``__init__``. The response body is
read up to ``MAX_RESPONSE_BODY`` bytes and no further: a destination answering with
megabytes gets its connection closed, not read.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, ClassVar, Mapping, Union
from urllib.parse import urlsplit

import certifi

from ..errors import DeliveryError
from ..options import Integer, Number, OptionsSchema
from ..resources import PerThread
from ..version import __version__
from .base import Destination, Payload
from .deadline import Deadline, DeadlineHTTPConnection, DeadlineHTTPSConnection

Connection = Union[DeadlineHTTPConnection, DeadlineHTTPSConnection]
# What a kept-alive connection the server closed meanwhile raises when it is reused.
STALE_CONNECTION_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

logger = logging.getLogger(__name__)

USER_AGENT = f"pixel-wsgi/{__version__}"
# Enough of an error response to tell why, not enough to fill the spool with HTML pages.
MAX_RESPONSE_TEXT = 1000
# The most of a response body read to keep its connection alive; past it the
# connection is closed instead (a 10 MB answer is never read whole).
MAX_RESPONSE_BODY = 64 * 1024
RETRYABLE_STATUSES = frozenset({408, 429})
# The longest Retry-After honoured, in seconds: an hour.
MAX_RETRY_AFTER = 3600.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date, at most
    ``MAX_RETRY_AFTER`` (a maintenance page asking for a century must not park the
    spooled events until someone replays them by hand)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, when.timestamp() - time.time()))


@dataclass(frozen=True)
class HTTPOptions:
    timeout: float
    retries: int


class HTTPOptionsSchema(OptionsSchema):
    model: ClassVar[Callable[..., Any]] = HTTPOptions
    # Seconds to connect and to wait for the answer; a request never waits longer than
    # what is left of the dispatch budget either.
    timeout = Number(load_default=5.0, minimum=0.001)
    # Attempts after the first; the dispatch budget usually ends them sooner.
    retries = Integer(load_default=3, minimum=0)


class HTTPDestination(Destination):
    """POSTs each event as JSON. Subclasses supply ``url_for`` and add headers in ``__init__``."""

    kind = "http"
    Options = HTTPOptionsSchema
    options: HTTPOptions

    def __init__(self, name: str, options: HTTPOptions) -> None:
        super().__init__(name, options)
        self.timeout = options.timeout
        self.retries = options.retries
        # HTTP/1.1 keeps the connection alive without saying so; every header costs.
        self.headers: dict[str, str] = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        self._sessions = PerThread(ThreadSession, ThreadSession.close)

    # -- what subclasses supply -------------------------------------------------

    def url_for(self, payload: Payload) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def headers_for(self, payload: Payload) -> Mapping[str, str]:
        """Headers that depend on the body (a signature); the fixed ones are in ``self.headers``."""
        return {}

    # -- delivery ---------------------------------------------------------------

    def deliver(self, payload: Payload) -> None:
        self.deliver_within(payload, None)

    def deliver_within(self, payload: Payload, seconds: float | None) -> None:
        body = payload.body
        local = self._sessions.get()
        connection, target = local.connection(self.url_for(payload))
        headers = {**self.headers, "Content-Length": str(len(body)), **self.headers_for(payload)}
        seconds = self.timeout if seconds is None else max(0.001, min(self.timeout, seconds))
        # Connect, send, status line, headers and body all end by this instant.
        local.deadline.start(seconds)
        try:
            response = _post(connection, target, body, headers)
            status = response.status
            data = _read_bounded(connection, response)
        except socket.timeout as exc:
            connection.close()
            raise DeliveryError(f"timed out after {seconds:.3g}s ({describe(exc)})") from None
        except http.client.IncompleteRead as exc:
            connection.close()
            raise DeliveryError(
                f"Connection broken: closed mid-response ({len(exc.partial)} bytes read, {exc.expected} more expected)"
            ) from None
        except (http.client.HTTPException, OSError) as exc:
            connection.close()
            raise DeliveryError(f"{type(exc).__name__}: {describe(exc)}") from None
        if 200 <= status < 300:
            # The status says the destination has the event, even if its body was cut off.
            return
        text = data[:MAX_RESPONSE_TEXT].decode("utf-8", "replace")
        retryable = status >= 500 or status in RETRYABLE_STATUSES
        raise DeliveryError(
            f"HTTP {status}",
            retryable=retryable,
            status=status,
            retry_after=parse_retry_after(response.getheader("Retry-After")) if retryable else None,
            response=text,
        )

    def close(self) -> None:
        self._sessions.close()


def _post(connection: Connection, target: str, body: bytes, headers: Mapping[str, str]) -> http.client.HTTPResponse:
    """POST on a kept-alive connection, or on a new one if the server closed it meanwhile.

    A connection the server has closed is found before it is used (``is_stale``) or,
    if it closed in the instant between, by the error of the first send or read; only
    then is the request sent again, on a fresh connection. Events are delivered at
    least once anyway (a destination deduplicates by ``messageId``).
    """
    reused = connection.sock is not None
    if reused and connection.is_stale():
        connection.close()
        reused = False
    try:
        connection.request("POST", target, body, dict(headers))
        return connection.getresponse()
    except STALE_CONNECTION_ERRORS:
        connection.close()
        if not reused:
            raise
    connection.request("POST", target, body, dict(headers))
    return connection.getresponse()


def _read_bounded(connection: Connection, response: http.client.HTTPResponse) -> bytes:
    """Up to ``MAX_RESPONSE_BODY`` bytes of the body; the connection is kept only if that was all.

    A body cut off (the connection closed mid-way, or still trickling in at the
    deadline) raises, and the caller closes the connection: the destination may not
    have taken the event. A body longer than ``MAX_RESPONSE_BODY`` is not read on: its
    connection is closed, and its status stands.
    """
    data = response.read(MAX_RESPONSE_BODY + 1)
    if len(data) > MAX_RESPONSE_BODY:
        connection.close()
        return data[:MAX_RESPONSE_BODY]
    # http.client returns a short read, not an error, when the peer closes before the
    # announced Content-Length (a chunked body cut off does raise IncompleteRead).
    if response.length:
        raise http.client.IncompleteRead(data, response.length)
    if not response.isclosed() and response.read(1):
        connection.close()
    return data


class ThreadSession:
    """One thread's connection to each origin it posts to, and its delivery deadline."""

    __slots__ = ("connections", "deadline")

    def __init__(self) -> None:
        self.connections: dict[str, tuple[Connection, str]] = {}
        # The deadline of the delivery this thread is making, read by its connections.
        self.deadline = Deadline()

    def connection(self, url: str) -> tuple[Connection, str]:
        """This thread's connection for ``url``'s origin, and the request target."""
        found = self.connections.get(url)
        if found is None:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host = parts.hostname or ""
            connection: Connection
            if parts.scheme == "https":
                connection = DeadlineHTTPSConnection(host, parts.port, self.deadline, _tls_context())
            else:
                connection = DeadlineHTTPConnection(host, parts.port, self.deadline)
            found = self.connections[url] = (connection, target)
        return found

    def close(self) -> None:
        for connection, _ in self.connections.values():
            connection.close()
        self.connections.clear()


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """Certificates verified against certifi's bundle, host names checked; built once."""
    return ssl.create_default_context(cafile=certifi.where())


def describe(exc: BaseException) -> str:
    """The root cause of a connection error in a few words ("Connection refused")."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.strerror:
            return str(cause.strerror)
        inner = getattr(cause, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((arg for arg in cause.args if isinstance(arg, BaseException)), None)
        cause = inner or cause.__cause__ or cause.__context__
    text = str(exc)
    return text.splitlines()[0][:300] if text else "no detail"


def basic_auth(write_key: str) -> str:
    """``Authorization`` for RudderStack and Segment: the write key as user, empty password."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode("ascii")
