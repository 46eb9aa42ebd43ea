"""The common part of HTTP destinations: a keep-alive pool, timeouts and status mapping.

Each destination keeps one ``requests.Session`` per thread (gthread workers share the
destination object; a Session is not documented as thread-safe) and per process: the
first ``deliver`` in a forked gunicorn worker makes a new one, so no socket opened
before the fork is ever shared. Nothing is opened in the constructor.

requests builds the connection pool (its ``HTTPAdapter``: keep-alive, TLS verification
against certifi's bundle) and each POST goes straight to that urllib3 pool. On the
request path ``Session.request`` merges environment settings (proxies,
``REQUESTS_CA_BUNDLE``, ``.netrc``) on every call, and even ``Session.send`` spends more
on cookie jars, hooks and response wrapping than the POST itself costs on a fast
network (measured: about 3x a raw ``http.client`` keep-alive POST, against 1.7x this
way). Headers and the ``Authorization`` value are computed once, in ``__init__``.

Every wait is bounded by one wall-clock deadline per delivery (``deadline.py``): a
server that answers a byte every few seconds, status line and headers included,
cannot hold a request past it, where urllib3's read timeout restarts at every byte.
The response body is read up to ``MAX_RESPONSE_BODY`` bytes and no further: a
destination answering with megabytes gets its connection closed, not read.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import requests
import requests.adapters
import urllib3
from urllib3 import HTTPConnectionPool
from urllib3.util import Timeout, parse_url

from ..errors import DeliveryError
from ..options import Integer, Number, OptionsSchema
from ..resources import PerThread
from ..version import __version__
from .base import Destination, Payload
from .deadline import Deadline, deadline_connection_classes

logger = logging.getLogger(__name__)

USER_AGENT = f"pixel-wsgi/{__version__}"
# Enough of an error response to tell why, not enough to fill the spool with HTML pages.
MAX_RESPONSE_TEXT = 1000
# The most of a response body read to keep its connection alive; past it the
# connection is closed instead (a 10 MB answer is never read whole).
MAX_RESPONSE_BODY = 64 * 1024
RETRYABLE_STATUSES = frozenset({408, 429})


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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

    def _pool(self, url: str) -> tuple[HTTPConnectionPool, str]:
        """This thread's connection pool for ``url``'s origin, and the request target."""
        local = self._sessions.get()
        found = local.pools.get(url)
        if found is None:
            parsed = parse_url(url)
            target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
            pool = _pool_for(local.session, url)
            # The pool is this thread's alone: its connections read this thread's deadline.
            pool.ConnectionCls = deadline_connection_classes[pool.scheme]
            pool.conn_kw["deadline"] = local.deadline
            found = local.pools[url] = (pool, target)
        return found

    def deliver(self, payload: Payload) -> None:
        self.deliver_within(payload, None)

    def deliver_within(self, payload: Payload, seconds: float | None) -> None:
        body = payload.body
        local = self._sessions.get()
        pool, target = self._pool(self.url_for(payload))
        headers = {**self.headers, "Content-Length": str(len(body)), **self.headers_for(payload)}
        seconds = self.timeout if seconds is None else max(0.001, min(self.timeout, seconds))
        # Connect, send, status line, headers and body all end by this instant.
        local.deadline.start(seconds)
        try:
            response = pool.urlopen(
                "POST",
                target,
                body=body,
                headers=headers,
                retries=False,  # retries are the dispatcher's, within its budget
                redirect=False,
                assert_same_host=False,
                timeout=Timeout(connect=seconds, read=seconds),
                preload_content=False,
            )
        except urllib3.exceptions.NewConnectionError as exc:
            # Caught first: urllib3 makes it a subclass of ConnectTimeoutError.
            raise DeliveryError(f"{type(exc).__name__}: {describe(exc)}") from None
        except urllib3.exceptions.TimeoutError as exc:
            raise DeliveryError(f"timed out after {seconds:.3g}s ({type(exc).__name__})") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {describe(exc)}") from None
        status = response.status
        data = read_bounded(response, seconds)
        if 200 <= status < 300:
            # The status says the destination has the event, even if its body was cut off.
            return
        text = data[:MAX_RESPONSE_TEXT].decode("utf-8", "replace")
        retryable = status >= 500 or status in RETRYABLE_STATUSES
        raise DeliveryError(
            f"HTTP {status}",
            retryable=retryable,
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")) if retryable else None,
            response=text,
        )

    def close(self) -> None:
        self._sessions.close()


class ThreadSession:
    """One thread's ``requests.Session`` and the urllib3 pool of each URL it posts to."""

    __slots__ = ("session", "pools", "deadline")

    def __init__(self) -> None:
        self.session = requests.Session()
        # Never read proxies, certificates or .netrc from the environment.
        self.session.trust_env = False
        self.pools: dict[str, tuple[HTTPConnectionPool, str]] = {}
        # The deadline of the delivery this thread is making, read by its connections.
        self.deadline = Deadline()

    def close(self) -> None:
        self.session.close()


def _pool_for(session: requests.Session, url: str) -> HTTPConnectionPool:
    """The urllib3 pool requests' adapter would use for ``url``, TLS verification included."""
    adapter = session.get_adapter(url)
    assert isinstance(adapter, requests.adapters.HTTPAdapter)
    request = requests.PreparedRequest()
    request.prepare(method="POST", url=url)
    if hasattr(adapter, "get_connection_with_tls_context"):  # requests >= 2.32
        pool = adapter.get_connection_with_tls_context(request, verify=True)
    else:  # pragma: no cover - older requests
        pool = adapter.get_connection(url)
    adapter.cert_verify(pool, url, True, None)
    assert isinstance(pool, HTTPConnectionPool)
    return pool


def read_bounded(response: urllib3.BaseHTTPResponse, seconds: float) -> bytes:
    """Up to ``MAX_RESPONSE_BODY`` bytes of the body; the connection is kept only if that was all.

    A body cut off (the connection closed mid-way, or still trickling in at the
    deadline) is a failed delivery: the destination may not have the event. A body
    longer than ``MAX_RESPONSE_BODY`` is not read on: its connection is closed.
    """
    try:
        data = response.read(MAX_RESPONSE_BODY + 1, decode_content=False)
        if len(data) <= MAX_RESPONSE_BODY and not response.read(1, decode_content=False):
            response.release_conn()
            return data
    except urllib3.exceptions.TimeoutError as exc:
        response.close()
        raise DeliveryError(f"timed out after {seconds:.3g}s reading the response ({type(exc).__name__})") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        response.close()
        raise DeliveryError(f"{type(exc).__name__} reading the response: {describe(exc)}") from None
    # Closing the response closes its connection; the pool opens a new one next time.
    response.close()
    response.release_conn()
    return data


def describe(exc: BaseException) -> str:
    """The root cause of a requests error in a few words ("Connection refused"), not
    urllib3's "HTTPConnectionPool(...): Max retries exceeded with url: ..." paragraph."""
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
