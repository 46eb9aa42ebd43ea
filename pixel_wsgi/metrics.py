"""Prometheus metrics: counters fed by the app's ``Observer`` calls, served at ``[metrics] path``.

Across gunicorn workers the counts live in ``prometheus_client``'s multiprocess files
(``$PROMETHEUS_MULTIPROC_DIR``): each worker writes its own, and whichever worker answers
a scrape adds them all up. ``pixel_wsgi.gunicorn_hooks`` sets that directory up when
the environment does not, and removes a dead worker's gauges. Without the variable the
metrics are those of the one process (``pixel-wsgi serve``, wsgiref, waitress).

``prometheus_client`` is imported on the first use in each process, never at start-up:
it chooses between in-process and multiprocess values when it is imported, and under
``gunicorn --preload`` the master builds the app before the directory exists.

What costs per request: one counter increment, and per destination one counter
increment and one histogram observation; each is an ``mmap`` write under
``prometheus_client``'s lock in multiprocess mode (about a microsecond). Labelled
children are looked up in a plain dict, not through ``labels()`` (which takes a lock
per call). Spool counts are read from SQLite at scrape time only, and the breaker
gauge is written only when a breaker changes state.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sqlite3
import threading
import weakref
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, Mapping, Sequence, Tuple

from .config import MetricsConfig
from .observer import Observer
from .resources import database_uri
from .spool import Spool

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics_core import Metric

logger = logging.getLogger(__name__)

MULTIPROCESS_ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
# From a millisecond (a local SQLite store) to the default dispatch budget and beyond.
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _ProcessMetrics:
    """The metric objects of one process, created after the fork (see the module docstring)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get(MULTIPROCESS_ENV_VAR))
        # In multiprocess mode the files are the registry: scrapes read them, not this.
        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        self.requests: Counter = Counter(
            "pixel_requests",
            "Pixel requests answered, by endpoint, status and source.",
            ("endpoint", "status", "source"),
            registry=self.registry,
        )
        self.deliveries: Counter = Counter(
            "pixel_deliveries",
            "Events per destination by outcome: delivered, spooled, dead (refused for good) or lost (not even spooled).",
            ("destination", "outcome"),
            registry=self.registry,
        )
        self.delivery_seconds: Histogram = Histogram(
            "pixel_delivery_seconds",
            "Seconds spent delivering one event to one destination, retries included.",
            ("destination",),
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
        self.breaker_open: Gauge = Gauge(
            "pixel_breaker_open",
            "1 while a destination's circuit breaker is open in any live worker.",
            ("destination",),
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self.machine_opens: Counter = Counter(
            "pixel_machine_opens", "Events fetched by a known machine (mail proxies, scanners, bots).", ("fetcher",), registry=self.registry
        )
        # Labelled children by label values: a dict lookup instead of labels()' lock.
        self.children: Dict[Tuple[str, ...], Any] = {}
        self.breakers: Dict[str, bool] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self.children.get(key)
        if child is None:
            child = self.children.setdefault(key, metric.labels(*labels))
        return child


class PrometheusMetrics(Observer):
    """The metrics observer and the scrape endpoint (``endpoint``), for one app."""

    wants_ignored = False

    def __init__(self, settings: MetricsConfig, spool: Spool) -> None:
        self.settings = settings
        self.spool = spool
        self.allowed = tuple(ipaddress.ip_network(network, strict=False) for network in settings.allow)
        self._process: _ProcessMetrics | None = None
        # Taken only when a process creates its metrics, never per request.
        self._lock = threading.Lock()
        self._warned = False
        # A forked worker makes metrics of its own. Told by the fork rather than asking
        # os.getpid() per call: that is a system call, on every request. A weak
        # reference, so that the hook does not keep a closed app alive.
        reference = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_process_metrics(reference))

    def _metrics(self) -> _ProcessMetrics:
        process = self._process
        if process is None:
            with self._lock:
                process = self._process
                if process is None:
                    process = self._process = _ProcessMetrics()
        return process

    # -- Observer ------------------------------------------------------------------

    def accepted(self, endpoint: str, source: str, event: Mapping[str, Any], ignored: Sequence[str]) -> None:
        metrics = self._metrics()
        metrics.child(metrics.requests, endpoint, "200", source).inc()

    def rejected(self, endpoint: str, status: int, reason: str, source: str | None, query: str) -> None:
        metrics = self._metrics()
        # Unknown paths would make a label per scanner's guess: they all count as "other".
        label = endpoint if endpoint in ("page", "track", "click") else "other"
        metrics.child(metrics.requests, label, str(status), source or "").inc()

    def delivery(self, destination: str, outcome: str, seconds: float, breaker_open: bool) -> None:
        metrics = self._metrics()
        metrics.child(metrics.deliveries, destination, outcome).inc()
        if seconds > 0.0:
            metrics.child(metrics.delivery_seconds, destination).observe(seconds)
        if metrics.breakers.get(destination) != breaker_open:
            metrics.breakers[destination] = breaker_open
            metrics.child(metrics.breaker_open, destination).set(1 if breaker_open else 0)

    def machine_open(self, fetcher: str) -> None:
        metrics = self._metrics()
        metrics.child(metrics.machine_opens, fetcher).inc()

    # -- the scrape ------------------------------------------------------------------

    def endpoint(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Prometheus text for an allowed client; 404 for anyone else (as if not there)."""
        if not self.allows(environ.get("REMOTE_ADDR", "")):
            body = b"not found"
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
            return [body]
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        metrics = self._metrics()
        if metrics.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry = metrics.registry
            self._warn_if_forked(environ)
        output = generate_latest(registry) + generate_latest(_SpoolRegistry(self.spool.path))
        start_response(
            "200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(output))), ("Cache-Control", "no-store")]
        )
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [output]

    def allows(self, address: str) -> bool:
        # The socket's peer, never X-Forwarded-For: a client could write any address there.
        try:
            client = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
            client = client.ipv4_mapped
        return any(client in network for network in self.allowed)

    def _warn_if_forked(self, environ: WSGIEnvironment) -> None:
        if not self._warned and str(environ.get("SERVER_SOFTWARE", "")).startswith("gunicorn"):
            self._warned = True
            logger.warning(
                "metrics under gunicorn without $%s count this worker only: run gunicorn with -c python:pixel_wsgi.gunicorn_hooks",
                MULTIPROCESS_ENV_VAR,
            )


def _forget_process_metrics(reference: weakref.ref[PrometheusMetrics]) -> None:
    metrics = reference()
    if metrics is not None:
        metrics._process = None
        metrics._lock = threading.Lock()  # a lock held by another thread at the fork stays held


class _SpoolRegistry:
    """``pixel_spool_events{destination,state}``, read from the spool file at scrape time.

    A read-only connection of its own, closed at once: a scrape must neither create the
    spool nor leave a connection behind in a thread that ends with the request.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "pixel_spool_events", "Events waiting in the spool, by destination and state.", labels=("destination", "state")
        )
        if os.path.exists(self.path):
            try:
                connection = sqlite3.connect(database_uri(self.path, "ro"), uri=True, timeout=1.0)
                try:
                    rows = connection.execute("SELECT destination, dead, COUNT(*) FROM spool GROUP BY destination, dead").fetchall()
                finally:
                    connection.close()
            except sqlite3.Error as exc:
                logger.warning("metrics: cannot read the spool %s (%s)", self.path, exc)
                rows = []
            for destination, dead, count in rows:
                family.add_metric((destination, "dead" if dead else "waiting"), count)
        yield family
