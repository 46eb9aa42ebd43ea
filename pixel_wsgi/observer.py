"""``Observer``: what the app tells the outside about each request and each delivery.

The app calls one observer (``PixelApp.observer``; ``None`` costs one attribute test per
request). Metrics, the live debugger of ``pixel-wsgi serve`` and any operator's own
hook subclass ``Observer`` and override what they need; ``Observers`` hands each call to
several. Every method runs on the request path, in the request's thread: keep it short,
and never raise (the pixel's bookkeeping must not cost a client its answer).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)


class Observer:
    """Does nothing; subclasses override the calls they care about."""

    # Whether ``accepted`` needs the ignored parameters: finding them is a second pass
    # over the query's keys, which an observer that only counts can spare every request.
    wants_ignored = True

    def accepted(self, endpoint: str, source: str, event: Mapping[str, Any], ignored: Sequence[str]) -> None:
        """An event was built and is safe (delivered or spooled); ``ignored`` names the
        query parameters that did not make it into the event (``propertes.revenue``)."""

    def rejected(self, endpoint: str, status: int, reason: str, source: str | None, query: str) -> None:
        """A request was refused (also when ``errors_as_pixel`` answered it with a GIF).
        ``endpoint`` is ``page``, ``track`` or the path of anything else."""

    def delivery(self, destination: str, outcome: str, seconds: float, breaker_open: bool) -> None:
        """One event's fate at one destination: ``delivered``, ``spooled`` or ``dead``
        (refused for good), after ``seconds`` of trying; ``breaker_open`` is the
        destination's circuit breaker in this process afterwards."""

    def machine_open(self, fetcher: str) -> None:
        """An event came from a known machine fetcher (a mail proxy, a scanner, a bot)."""


class Observers(Observer):
    """Several observers as one; a failing one is logged and the others still run."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = tuple(observers)
        self.wants_ignored = any(observer.wants_ignored for observer in self.observers)

    def accepted(self, endpoint: str, source: str, event: Mapping[str, Any], ignored: Sequence[str]) -> None:
        for observer in self.observers:
            try:
                observer.accepted(endpoint, source, event, ignored)
            except Exception:
                logger.exception("observer %r failed", observer)

    def rejected(self, endpoint: str, status: int, reason: str, source: str | None, query: str) -> None:
        for observer in self.observers:
            try:
                observer.rejected(endpoint, status, reason, source, query)
            except Exception:
                logger.exception("observer %r failed", observer)

    def delivery(self, destination: str, outcome: str, seconds: float, breaker_open: bool) -> None:
        for observer in self.observers:
            try:
                observer.delivery(destination, outcome, seconds, breaker_open)
            except Exception:
                logger.exception("observer %r failed", observer)

    def machine_open(self, fetcher: str) -> None:
        for observer in self.observers:
            try:
                observer.machine_open(fetcher)
            except Exception:
                logger.exception("observer %r failed", observer)


def combine(first: Observer | None, second: Observer | None) -> Observer | None:
    """One observer for two, either of which may be missing."""
    if first is None:
        return second
    if second is None:
        return first
    return Observers((first, second))
