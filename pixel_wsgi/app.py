"""``PixelApp``: the WSGI application that answers ``{prefix}/page``, ``/track`` and ``/click``.

A request flows one way: routing → ``parsing`` (query string → nested dict) →
``schemas`` (validate, type) → ``event`` (fields the server adds) → ``dispatch``.
Every refusal on that way is a ``RequestRejected`` and is turned into a response in
exactly one place, ``_reject``.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Tuple
from urllib.parse import unquote

from marshmallow import ValidationError
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from .config import Config, SourceConfig, load_config
from .dedupe import DedupeStore, default_path
from .destinations import Destination
from .dispatch import Dispatcher
from .drainer import Drainer
from .errors import RequestRejected, bad_parameter
from .event import complete_event
from .fetchers import FetcherClassifier
from .health import HealthCheck
from .hostlogs import use_gunicorn_error_log
from .logsafe import log_safe
from .masking import mask_write_key
from .observer import Observer, combine
from .options import flatten_messages
from .parsing import nest, split_query, top_level_name
from .recorder import EventRecorder
from .redirects import RedirectPolicy
from .replay import Replayer
from .responses import Responses
from .schemas import EventSchemas
from .segment_pixel import expand_data
from .signing import SIGNATURE_PARAMETERS, verify
from .spool import Spool, SpoolFull

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)

ENDPOINTS = ("page", "track")
CLICK = "click"
# Endpoints under segment_prefix: Segment's pixel API, with ?data=<base64 JSON>.
SEGMENT_ENDPOINTS = {"segment-page": "page", "segment-track": "track"}
# Parameters the server owns: never copied from the query, whatever unknown_params says.
SERVER_OWNED_PARAMETERS = frozenset({"writeKey", "type", "receivedAt", "integrations"}) | SIGNATURE_PARAMETERS
CLICK_EVENT = "Link Clicked"
# Key lists remembered by sort_parameters: a pixel template sends the same parameters on
# every request, so a few entries serve nearly all traffic; the bound caps the memory
# when clients vary.
MAX_CACHED_KEY_LISTS = 256

Handler = Callable[["WSGIEnvironment", "StartResponse"], Iterable[bytes]]


class PixelApp:
    """The pixel endpoints as a WSGI app.

    ``config`` is a path to a TOML file, a dict of the same shape, a loaded ``Config``,
    or ``None`` to read the file named by ``$PIXEL_WSGI_CONFIG``. Every mistake in it
    raises ``ConfigError`` here, never at the first request. Nothing is opened here
    (no sockets, files or threads), so the app is safe to build before a fork.
    """

    def __init__(self, config: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None) -> None:
        # Every check, the spool file's included, is made here: nothing fails later.
        self.config = load_config(config)
        # Under gunicorn without a logging set-up, our records go to its error log.
        use_gunicorn_error_log()
        self.destinations: Dict[str, Destination] = {name: settings.build() for name, settings in self.config.destinations.items()}
        self.spool = Spool(self.config.spool.path, self.config.spool.max_bytes)
        self.dispatcher = Dispatcher(self.destinations, self.spool, self.config.dispatch)
        self.drainer: Drainer | None = None
        if self.config.spool.drain_interval > 0:
            replayer = Replayer(self.destinations, self.spool, breakers=self.dispatcher.breakers)
            self.drainer = Drainer(replayer, self.destinations, self.config.spool.drain_interval)
        self.sources_by_write_key = {source.write_key: source for source in self.config.sources}
        self.schemas = EventSchemas()
        self.responses = Responses(self.config)
        self.redirect_policies = {source.name: RedirectPolicy(source.redirect_hosts) for source in self.config.sources}
        self.dedupe: DedupeStore | None = None
        if any(source.dedupe_window > 0 for source in self.config.sources):
            self.dedupe = DedupeStore(self.config.dedupe.path or default_path(self.config.spool.path))
            self.dedupe.check()
        prefix = self.config.prefix
        self.paths = tuple(f"{prefix}/{endpoint}" for endpoint in ENDPOINTS)
        routes = dict(zip(self.paths, ENDPOINTS))
        routes[f"{prefix}/{CLICK}"] = CLICK
        if self.config.segment_prefix is not None:
            for endpoint, event_type in SEGMENT_ENDPOINTS.items():
                routes[f"{self.config.segment_prefix}/{event_type}"] = endpoint
        # merge_slashes would answer `//page` with a redirect: a pixel never follows one.
        self.url_map = Map(
            [Rule(path, endpoint=endpoint, methods=["GET", "HEAD"]) for path, endpoint in routes.items()],
            merge_slashes=False,
        )
        # Bound once: matching needs only PATH_INFO and the method, never the host.
        self._url_adapter = self.url_map.bind("localhost")
        # The exact paths answer GET and HEAD: a dict lookup settles nearly every
        # request; anything else (405, 404) still goes through the Map.
        self._endpoints_by_path = routes
        self._destination_names = {source.name: self.config.destinations_for(source) for source in self.config.sources}
        self.recorder = EventRecorder(
            self.dispatcher, FetcherClassifier(self.config.fetchers), self.dedupe, self._destination_names, self.config.trusted_proxies
        )
        # Told about every accepted event, rejection and delivery (metrics, the debugger).
        self.observer: Observer | None = None
        # Operations endpoints beside the pixels: same prefix, answered by this app.
        self.operations: Dict[str, Handler] = {f"{prefix}/health": HealthCheck(self.spool)}
        if self.config.metrics.path:
            from .metrics import PrometheusMetrics  # prometheus_client is only needed then

            metrics = PrometheusMetrics(self.config.metrics, self.spool)
            self.observer = metrics
            self.operations[self.config.metrics.path] = metrics.endpoint
        self.dispatcher.observer = self.recorder.observer = self.observer
        # Every path this app answers (pixels, click, Segment's, health, metrics): what
        # PixelMiddleware takes over from the site it wraps.
        self.owned_paths = frozenset((*routes, *self.operations))

    def observe(self, observer: Observer) -> None:
        """Add an observer (the debugger of ``pixel-wsgi serve``, an operator's own hook)."""
        self.observer = combine(self.observer, observer)
        self.dispatcher.observer = self.recorder.observer = self.observer

    # -- WSGI ---------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self.wsgi_app(environ, start_response)

    def wsgi_app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self.drainer is not None:
            # Started by the first request of each process, after any fork.
            self.drainer.ensure_running()
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO") or "/"
        endpoint = self._endpoints_by_path.get(path)
        if endpoint is None and path in self.operations:
            return self.operations[path](environ, start_response)
        if endpoint is None or (method != "GET" and method != "HEAD"):
            try:
                endpoint, _ = self._url_adapter.match(path, method)
            except MethodNotAllowed:
                self._log_rejection(environ, 405, f"method {method} not allowed", None)
                return self.responses.error(start_response, 405, "method not allowed", [("Allow", "GET, HEAD")])
            except NotFound:
                return self.responses.error(start_response, 404, "not found")
        try:
            if endpoint == CLICK:
                return self.on_click(environ, start_response, head=method == "HEAD")
            if method == "HEAD":
                # Link scanners and mail prefetchers probe with HEAD: answer, record nothing.
                return self.responses.success(start_response, head=True)
            if endpoint in SEGMENT_ENDPOINTS:
                return self.on_event(SEGMENT_ENDPOINTS[endpoint], environ, start_response, segment=True)
            return self.on_event(endpoint, environ, start_response)
        except Exception:  # the last line of defence: a bug must not show a traceback
            logger.exception("unexpected error handling %s", log_safe(str(environ.get("PATH_INFO"))))
            self._notify_rejected(environ, 500, "internal error", None)
            return self.responses.error(start_response, 500, "internal error")

    # -- endpoints ----------------------------------------------------------

    def on_event(
        self, event_type: str, environ: WSGIEnvironment, start_response: StartResponse, *, segment: bool = False
    ) -> Iterable[bytes]:
        """``page`` and ``track`` differ only in their schema: one handler serves both.

        ``segment``: Segment's form, whose parameters may come as ``data=<base64 JSON>``.
        """
        query = environ.get("QUERY_STRING", "")
        source: SourceConfig | None = None
        grouped: Dict[str, List[str]] | None = None
        try:
            parameters = grouped = split_query(query, self.config.limits)
            if segment:
                grouped = expand_data(parameters, self.config.limits)
            source = self._source(grouped)
            # The signature covers the URL's own parameters: for Segment's form, `data` as sent.
            self._verify_signature(parameters, source)
            event = self._build_event(event_type, grouped, source, environ)
        except RequestRejected as rejection:
            if source is None:
                source = self._source_hint(query, grouped)
            return self._reject(rejection, environ, start_response, source)
        try:
            safe = self.recorder.record(event, source, environ, client_message_id="messageId" in grouped)
        except SpoolFull:
            return self._reject(RequestRejected(503, "spool is full"), environ, start_response, source)
        if not safe:
            lost = RequestRejected(503, "the event could not be delivered or stored; try again")
            return self._reject(lost, environ, start_response, source)
        if self.observer is not None:
            self._notify_accepted(event_type, source, event, grouped)
        return self.responses.success(start_response)

    def on_click(self, environ: WSGIEnvironment, start_response: StartResponse, *, head: bool) -> Iterable[bytes]:
        """Record a ``track`` event for a clicked link and redirect the person to its ``url``.

        The person's redirect comes first: once the source and the target are known to
        be good, a mistake in the event's parameters or a lost event is logged and the
        person still lands where the link said. Refusals before that point (write key,
        signature, target) are text errors, never a GIF: a person is looking at them.
        """
        source: SourceConfig | None = None
        try:
            grouped = split_query(environ.get("QUERY_STRING", ""), self.config.limits)
            source = self._source(grouped)
            signed = self._verify_signature(grouped, source)
            targets = grouped.pop("url", None)
            if not targets or not targets[0]:
                raise bad_parameter("url: required")
            if len(targets) > 1:
                raise bad_parameter("url: given more than once; a single value is required")
            location = self.redirect_policies[source.name].check(targets[0], signed=signed)
        except RequestRejected as rejection:
            return self._reject(rejection, environ, start_response, source, as_pixel=False)
        if head:
            # Link scanners probe with HEAD: show where the link goes, record nothing.
            return self.responses.redirect(start_response, location)
        if not grouped.get("event", [""])[0]:
            grouped["event"] = [CLICK_EVENT]
        grouped["properties.url"] = [location]
        try:
            event = self._build_event("track", grouped, source, environ)
        except RequestRejected as rejection:
            self._log_rejection(environ, rejection.status, f"click redirected, event not recorded: {rejection.reason}", source)
            return self.responses.redirect(start_response, location, error=rejection.reason)
        try:
            recorded = self.recorder.record(event, source, environ, client_message_id="messageId" in grouped)
        except SpoolFull:
            recorded = False
        if not recorded:
            logger.error(
                "click event lost: neither delivered nor spooled (source %s, messageId %s); the person was redirected",
                source.name,
                event["messageId"],
            )
        return self.responses.redirect(start_response, location)

    # -- steps --------------------------------------------------------------

    def _verify_signature(self, grouped: Dict[str, List[str]], source: SourceConfig) -> bool:
        """Whether the request is signed by the source; a 403 for a bad or missing signature."""
        if not source.signing_secrets:
            # No secrets: sig and exp mean nothing to this source and are ignored.
            return False
        return verify(grouped, source.signing_secrets, required=source.require_signature)

    def _source(self, grouped: Dict[str, List[str]]) -> SourceConfig:
        values = grouped.get("writeKey")
        if not values or not values[0]:
            raise bad_parameter("writeKey: required")
        if len(values) > 1:
            raise bad_parameter("writeKey: given more than once; a single value is required")
        source = self.sources_by_write_key.get(values[0])
        if source is None:
            raise RequestRejected(401, "invalid write key")
        if not source.enabled:
            raise RequestRejected(404, "source is disabled")
        return source

    def _build_event(
        self, event_type: str, grouped: Dict[str, List[str]], source: SourceConfig, environ: WSGIEnvironment
    ) -> dict[str, Any]:
        known_keys, unknown_keys = sort_parameters(tuple(grouped), self.schemas.fields[event_type])
        extra = None
        if unknown_keys:
            if source.unknown_params == "reject":
                raise bad_parameter(f"unknown parameter{'s' if len(unknown_keys) > 1 else ''}: {', '.join(unknown_keys)}")
            if source.unknown_params == "keep":
                extra = nest(grouped, self.config.limits, unknown_keys)
        nested = nest(grouped, self.config.limits, known_keys)
        try:
            loaded = self.schemas.load(event_type, nested, infer_types=source.infer_types)
        except ValidationError as error:
            raise bad_parameter("; ".join(flatten_messages(error.messages))) from None
        return complete_event(event_type, loaded, source, environ, self.config.trusted_proxies, extra)

    def _source_hint(self, query: str, grouped: Dict[str, List[str]] | None) -> SourceConfig | None:
        """The source of a request refused before its write key was read (for errors_as_pixel)."""
        if grouped is not None:
            values = grouped.get("writeKey")
            return self.sources_by_write_key.get(values[0]) if values else None
        for piece in query.split("&"):
            if piece.startswith("writeKey="):
                try:
                    return self.sources_by_write_key.get(unquote(piece[9:].replace("+", " "), errors="strict"))
                except UnicodeDecodeError:
                    return None
        return None

    def _reject(
        self,
        rejection: RequestRejected,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        source: SourceConfig | None,
        *,
        as_pixel: bool = True,
    ) -> Iterable[bytes]:
        self._log_rejection(environ, rejection.status, rejection.reason, source)
        # A 5xx is never answered as a pixel, even for errors_as_pixel: a 200 would say
        # the event was accepted when it was lost. The top-level errors_as_pixel covers
        # requests whose source cannot be known (no or an unknown write key).
        errors_as_pixel = source.errors_as_pixel if source is not None else self.config.errors_as_pixel
        if as_pixel and errors_as_pixel and rejection.status < 500:
            return self.responses.success(start_response, error=rejection.reason)
        return self.responses.error(start_response, rejection.status, rejection.reason)

    def _log_rejection(self, environ: WSGIEnvironment, status: int, reason: str, source: SourceConfig | None) -> None:
        if self.observer is not None:
            self._notify_rejected(environ, status, reason, source)
        level = logging.WARNING if status >= 500 else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "rejected %d %s: %s (source %s, client %s)",
                status,
                log_safe(environ.get("PATH_INFO", "")),
                log_safe(reason),
                source.name if source else "unknown",
                log_safe(environ.get("REMOTE_ADDR", "-")),
            )

    # -- observers --------------------------------------------------------------

    def _notify_accepted(self, event_type: str, source: SourceConfig, event: dict[str, Any], grouped: Dict[str, List[str]]) -> None:
        observer = self.observer
        assert observer is not None
        try:
            ignored = self.ignored_parameters(event_type, grouped, source) if observer.wants_ignored else ()
            observer.accepted(event_type, source.name, event, ignored)
        except Exception:  # bookkeeping must never cost the client its answer
            logger.exception("observer failed on an accepted event")

    def _notify_rejected(self, environ: WSGIEnvironment, status: int, reason: str, source: SourceConfig | None) -> None:
        if self.observer is None:
            return
        path: str = environ.get("PATH_INFO") or ""
        endpoint = self._endpoints_by_path.get(path) or path
        try:
            self.observer.rejected(endpoint, status, reason, source.name if source else None, environ.get("QUERY_STRING", ""))
        except Exception:  # bookkeeping must never cost the client its answer
            logger.exception("observer failed on a rejection")

    def ignored_parameters(self, event_type: str, grouped: Mapping[str, List[str]], source: SourceConfig) -> list[str]:
        """The query parameters that did not reach the event: unknown names (a typo such as
        ``propertes.revenue``), unless the source keeps them, and the ones the server owns."""
        known, unknown = sort_parameters(tuple(grouped), self.schemas.fields[event_type])
        reached = set(known).union(unknown if source.unknown_params == "keep" else ())
        # The server's own (neither known nor unknown) are ignored too, but for writeKey.
        return [key for key in grouped if key == "context.ip" or (key not in reached and top_level_name(key) != "writeKey")]

    # -- lifecycle ------------------------------------------------------------

    def destination(self, name: str) -> Destination:
        return self.destinations[name]

    def flush(self, timeout: float = 10.0) -> bool:
        """Commit now what the destinations of this process hold back for a moment (the
        SQLite store's journal), so that a test or script reading the store right after a
        request finds every event; ``False`` if one of them could not within ``timeout``."""
        flushed = True
        for destination in self.destinations.values():
            flush = getattr(destination, "flush", None)
            if flush is not None:
                flushed = bool(flush(timeout)) and flushed
        return flushed

    def close(self) -> None:
        """Stop the drainer; close every destination's connections and files."""
        if self.drainer is not None:
            self.drainer.close()
        self.dispatcher.close()
        if self.dedupe is not None:
            self.dedupe.close()

    def __repr__(self) -> str:
        keys = ", ".join(mask_write_key(source.write_key) for source in self.config.sources)
        return f"<PixelApp {self.config.prefix or '/'} sources=[{keys}]>"


@lru_cache(maxsize=MAX_CACHED_KEY_LISTS)
def sort_parameters(keys: Tuple[str, ...], known_fields: frozenset[str]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """The query's keys that belong to the event's fields, and the unknown ones, in query
    order (the server's own, such as ``writeKey``, in neither); one lookup per request."""
    known, unknown = [], []
    for key in keys:
        name = top_level_name(key)
        if name in known_fields:
            known.append(key)
        elif name not in SERVER_OWNED_PARAMETERS:
            unknown.append(key)
    return tuple(known), tuple(unknown)


def create_app(config: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None) -> PixelApp:
    """The factory for gunicorn: ``gunicorn 'pixel_wsgi:create_app()'`` reads ``$PIXEL_WSGI_CONFIG``."""
    return PixelApp(config)
