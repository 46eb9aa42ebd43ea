"""The common part of HTTP destinations: a keep-alive pool, timeouts and status mapping.

Each destination keeps one ``requests.Session`` per thread (gthread workers share the
destination object; a Session is not documented as thread-safe) and per process: the
first ``deliver`` in a forked gunicorn worker makes a new one, so no socket opened
before the fork is ever shared. Nothing is opened in the constructor.

The request is assembled by hand and handed to ``Session.send``: ``Session.request``
merges environment settings (proxies, ``REQUESTS_CA_BUNDLE``, ``.netrc``) on every call,
which costs more than the POST itself on a loopback network. Headers and the
``Authorization`` value are computed once, in ``configure``.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import os
import threading
import time
from typing import Any, Mapping

import requests
from requests.cookies import RequestsCookieJar
from requests.structures import CaseInsensitiveDict

from .. import __version__
from ..config import OptionReader
from ..errors import DeliveryError
from .base import Destination, Payload

logger = logging.getLogger(__name__)

USER_AGENT = f"pixel-wsgi/{__version__}"
# Seconds to connect and to wait for the answer; a request never waits longer than
# what is left of the dispatch budget either.
DEFAULT_TIMEOUT = 5.0
# Attempts after the first; the dispatch budget usually ends them sooner.
DEFAULT_RETRIES = 3
# Enough of an error response to tell why, not enough to fill the spool with HTML pages.
MAX_RESPONSE_TEXT = 1000
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


class HTTPDestination(Destination):
    """POSTs each event as JSON. Subclasses set ``self.url_template`` and headers in ``configure``."""

    kind = "http"

    def configure(self, options: OptionReader) -> None:
        self.timeout = options.number("timeout", DEFAULT_TIMEOUT, minimum=0.001)
        self.retries = options.integer("retries", DEFAULT_RETRIES)
        self.headers: dict[str, str] = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Accept": "*/*",
            "Connection": "keep-alive",
        }
        self._local = threading.local()
        self._sessions: list[tuple[int, requests.Session]] = []
        self._sessions_lock = threading.Lock()

    # -- what subclasses supply -------------------------------------------------

    def url_for(self, payload: Payload) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def headers_for(self, payload: Payload) -> Mapping[str, str]:
        """Headers that depend on the body (a signature); the fixed ones are in ``self.headers``."""
        return {}

    # -- delivery ---------------------------------------------------------------

    def _session(self) -> requests.Session:
        pid = os.getpid()
        session = getattr(self._local, "session", None)
        if session is None or self._local.pid != pid:
            session = requests.Session()
            # Never read proxies, certificates or .netrc from the environment per call.
            session.trust_env = False
            self._local.session = session
            self._local.pid = pid
            with self._sessions_lock:
                self._sessions.append((pid, session))
        return session

    def deliver(self, payload: Payload) -> None:
        self.deliver_within(payload, None)

    def deliver_within(self, payload: Payload, seconds: float | None) -> None:
        body = payload.body
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = self.url_for(payload)
        headers = CaseInsensitiveDict(self.headers)
        headers["Content-Length"] = str(len(body))
        headers.update(self.headers_for(payload))
        request.headers = headers
        request.body = body
        # Session.send looks into it on a redirect (which is answered, never followed).
        request._cookies = RequestsCookieJar()  # type: ignore[attr-defined]
        timeout = self.timeout if seconds is None else max(0.001, min(self.timeout, seconds))
        try:
            response = self._session().send(
                request, timeout=timeout, allow_redirects=False, proxies={}, stream=False, verify=True, cert=None
            )
        except requests.Timeout as exc:
            raise DeliveryError(f"timed out after {timeout:.3g}s ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            raise DeliveryError(f"{type(exc).__name__}: {describe(exc)}") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        text = response.text[:MAX_RESPONSE_TEXT]
        retryable = status >= 500 or status in RETRYABLE_STATUSES
        raise DeliveryError(
            f"HTTP {status}",
            retryable=retryable,
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")) if retryable else None,
            response=text,
        )

    def close(self) -> None:
        pid = os.getpid()
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for owner, session in sessions:
            # A session inherited through fork belongs to the parent: leave its sockets alone.
            if owner == pid:
                session.close()
        self._local = threading.local()


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


def read_url(options: OptionReader, key: str, default: str | None = None) -> Any:
    """A required (or defaulted) http(s) URL without a trailing slash."""
    url = options.nonempty_string(key, default, required=default is None)
    if isinstance(url, str) and url:
        if not url.startswith(("http://", "https://")):
            options.error(key, f"must be an http:// or https:// URL, not {url!r}")
        return url.rstrip("/")
    return url
