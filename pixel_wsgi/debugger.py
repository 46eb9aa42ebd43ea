"""The live debugger of ``pixel-wsgi serve``: the last requests, in a browser, as they arrive.

``RequestLog`` is an ``Observer`` that keeps the last ``MAX_ENTRIES`` pixel requests:
each accepted event as the destinations received it, with the parameters that did not
make it into the event (a typo such as ``propertes.revenue``), and each rejection with
its reason. ``DebuggerApp`` wraps the pixel app: ``/`` is the page (``debugger.html``,
plain HTML and CSS, no build step) and the page asks ``/_debugger/requests?after=ID``
about once a second for what is new; every other request goes to the pixel app.

Both answer only clients on the loopback interface: the page shows events as they were
sent, write keys cut to four characters, but still nothing for other machines to read.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import threading
import time
from collections import deque
from importlib import resources
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .observer import Observer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

MAX_ENTRIES = 100
PAGE_PATH = "/"
REQUESTS_PATH = "/_debugger/requests"
# The write key is a credential: the page shows its first four characters, as the logs do.
_WRITE_KEY_IN_QUERY = re.compile(r"((?:^|&)writeKey=[^&]{0,4})[^&]*")


class RequestLog(Observer):
    """The last ``MAX_ENTRIES`` pixel requests, newest last, each with an increasing ``id``."""

    def __init__(self, size: int = MAX_ENTRIES) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._ids = itertools.count(1)
        # The development server only: a lock per request costs nothing there.
        self._lock = threading.Lock()

    def accepted(self, endpoint: str, source: str, event: Mapping[str, Any], ignored: Sequence[str]) -> None:
        self._add({"outcome": "accepted", "status": 200, "endpoint": endpoint, "source": source, "event": event, "ignored": list(ignored)})

    def rejected(self, endpoint: str, status: int, reason: str, source: str | None, query: str) -> None:
        self._add(
            {
                "outcome": "rejected",
                "status": status,
                "endpoint": endpoint,
                "source": source,
                "reason": reason,
                "query": _WRITE_KEY_IN_QUERY.sub(r"\1…", query),
            }
        )

    def _add(self, entry: dict[str, Any]) -> None:
        entry["time"] = time.strftime("%H:%M:%S", time.localtime())
        with self._lock:
            entry["id"] = next(self._ids)
            self._entries.append(entry)

    def after(self, last_id: int) -> tuple[int, list[dict[str, Any]]]:
        """The id of the newest entry (0: none yet), and the entries newer than ``last_id``, oldest first."""
        with self._lock:
            latest = self._entries[-1]["id"] if self._entries else 0
            return latest, [entry for entry in self._entries if entry["id"] > last_id]


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class DebuggerApp:
    """``app`` with the debugger page at ``/``; ``hint`` is the example request it shows."""

    def __init__(self, app: WSGIApplication, log: RequestLog, *, hint: str = "") -> None:
        self.app = app
        self.log = log
        self.hint = hint
        self._page: bytes | None = None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path in (PAGE_PATH, REQUESTS_PATH) and is_loopback(environ.get("REMOTE_ADDR", "")):
            if path == PAGE_PATH:
                return self._respond(start_response, "text/html; charset=utf-8", self.page())
            return self._respond(start_response, "application/json", self._requests(environ.get("QUERY_STRING", "")))
        return self.app(environ, start_response)

    def page(self) -> bytes:
        if self._page is None:
            html = resources.files("pixel_wsgi").joinpath("debugger.html").read_text("utf-8")
            self._page = html.replace("{{HINT}}", _html_escape(self.hint)).encode("utf-8")
        return self._page

    def _requests(self, query: str) -> bytes:
        match = re.fullmatch(r"after=(\d{1,18})", query)
        latest, entries = self.log.after(int(match.group(1)) if match else 0)
        # ``latest`` below what the page has seen means the server was restarted: the page starts over.
        return json.dumps({"latest": latest, "entries": entries}, ensure_ascii=False, default=str).encode("utf-8")

    @staticmethod
    def _respond(start_response: StartResponse, content_type: str, body: bytes) -> Iterable[bytes]:
        start_response(
            "200 OK",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        return [body]


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
