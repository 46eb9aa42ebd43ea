"""``{prefix}/health``: whether this instance can keep an event, for load balancers.

A pixel gets a ``200`` only when its event was delivered or spooled, so an instance
whose spool cannot be written would answer ``503`` whenever a destination fails: the
load balancer should stop sending it traffic before that. The check proves the spool
writable the same way start-up does (its folder writable, the file's write lock
obtainable), without writing anything, and never makes an event.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Iterable

from .errors import ConfigError
from .responses import NO_CACHE_HEADERS
from .spool import Spool
from .version import __version__

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)


class HealthCheck:
    """A WSGI app: ``200 {"status": "ok", ...}`` or ``503 {"status": "unavailable", ...}``."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            body = b"method not allowed"
            headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *NO_CACHE_HEADERS]
            start_response("405 Method Not Allowed", [*headers, ("Allow", "GET, HEAD")])
            return [body]
        try:
            self.spool.check()
            problem = None
        except ConfigError as exc:
            problem = "; ".join(exc.errors)
        except Exception as exc:  # a check that cannot run says the instance is not healthy
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            status, report = "200 OK", {"status": "ok", "spool": "writable", "version": __version__}
        else:
            logger.warning("health check failed: %s", problem)
            status, report = "503 Service Unavailable", {"status": "unavailable", "spool": problem, "version": __version__}
        body = json.dumps(report).encode("utf-8")
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *NO_CACHE_HEADERS])
        return [] if method == "HEAD" else [body]
