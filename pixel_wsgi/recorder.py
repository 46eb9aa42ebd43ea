"""``EventRecorder``: what happens to a valid event before and around dispatch.

Between "this request is a valid event" and "the destinations have it" sit three email
rules, kept here so the app only asks ``recorder.record(...)``:

1. who fetched it (``pixel_wsgi.fetchers``): ``context.pixel`` is set by the server,
   observers are told, and a source with ``machine_opens = "drop"`` delivers nothing
   for a machine's fetch;
2. whether its ``messageId`` was already accepted within the source's
   ``dedupe_window`` (``pixel_wsgi.dedupe``);
3. dispatch, and releasing the dedupe claim when the event was lost, so that the
   client's retry is delivered.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from .config import SourceConfig
from .dedupe import DedupeStore
from .destinations import Payload
from .dispatch import Dispatcher
from .event import client_address
from .fetchers import Fetcher, FetcherClassifier
from .observer import Observer

__all__ = ["EventRecorder"]

logger = logging.getLogger(__name__)


class EventRecorder:
    def __init__(
        self,
        dispatcher: Dispatcher,
        fetchers: FetcherClassifier,
        dedupe: DedupeStore | None,
        destination_names: Mapping[str, tuple[str, ...]],
        trusted_proxies: int,
    ) -> None:
        self.dispatcher = dispatcher
        self.fetchers = fetchers
        self.dedupe = dedupe
        self.destination_names = destination_names
        self.trusted_proxies = trusted_proxies
        # Told about every machine open, flagged or dropped (metrics count them); the app
        # sets it with its own observer.
        self.observer: Observer | None = None

    def record(self, event: dict[str, Any], source: SourceConfig, environ: Mapping[str, Any], *, client_message_id: bool) -> bool:
        """Classify, deduplicate and dispatch one event; ``False`` only when it was lost.

        ``client_message_id``: the ``messageId`` came from the request (a generated
        UUID never repeats, so it skips the dedupe lookup).
        """
        context = event["context"]
        # context.pixel is the server's to say, like context.ip.
        context.pop("pixel", None)
        fetcher = self.fetchers.classify(environ.get("HTTP_USER_AGENT"), client_address(environ, self.trusted_proxies))
        if fetcher is not None:
            self._notify(source, fetcher)
            if fetcher.machine and source.machine_opens == "drop":
                logger.debug("machine open by %s dropped (source %s)", fetcher.name, source.name)
                return True
            context["pixel"] = fetcher.context
        message_id = event["messageId"]
        # Machine fetches are deduplicated apart from people's: a scanner that fetched the
        # pixel first must not make the reader's own open a "duplicate".
        scope = source.name if fetcher is None or not fetcher.machine else f"{source.name} (machine)"
        claimed = source.dedupe_window > 0 and client_message_id and self._claim(source, scope, message_id)
        if claimed is None:
            return True  # a duplicate within the window: already delivered or spooled
        safe = False
        try:
            safe = self.dispatcher.dispatch(Payload(event, source.name), self.destination_names[source.name])
        finally:
            # Lost, or answered "503 spool is full": the client's retry must not count
            # as a duplicate.
            if claimed and not safe:
                self._release(scope, message_id)
        return safe

    def _notify(self, source: SourceConfig, fetcher: Fetcher) -> None:
        if self.observer is None:
            return
        try:
            self.observer.machine_open(fetcher.name)
        except Exception:  # counting must never cost an event
            logger.exception("observer failed on a machine open (source %s)", source.name)

    def _claim(self, source: SourceConfig, scope: str, message_id: str) -> bool | None:
        """``True``: claimed; ``None``: a duplicate; ``False``: the dedupe file failed (deliver anyway)."""
        assert self.dedupe is not None
        try:
            if self.dedupe.claim(scope, message_id, source.dedupe_window):
                return True
        except Exception:  # a duplicate is better than a lost event
            logger.exception("dedupe store %s failed; delivering messageId %s without deduplication", self.dedupe.path, message_id)
            return False
        logger.info("duplicate messageId %s within %gs (source %s): not delivered again", message_id, source.dedupe_window, source.name)
        return None

    def _release(self, scope: str, message_id: str) -> None:
        assert self.dedupe is not None
        try:
            self.dedupe.release(scope, message_id)
        except Exception:
            logger.exception(
                "dedupe store %s failed to release messageId %s: a retry within the window is dropped", self.dedupe.path, message_id
            )
