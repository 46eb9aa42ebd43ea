"""Synchronous delivery of one event to the destinations of its source.

The app only asks ``dispatcher.dispatch(payload, names)`` and gets back whether the
event is safe (delivered, or kept for later); how destinations fail, are retried,
are spooled and are cut off by a circuit breaker is decided here.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping

from .destinations import DeliveryError, Destination, Payload

logger = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, destinations: Mapping[str, Destination]) -> None:
        self.destinations = dict(destinations)

    def dispatch(self, payload: Payload, names: Iterable[str]) -> bool:
        """Deliver to each named destination; ``True`` when every one has the event."""
        safe = True
        for name in names:
            destination = self.destinations[name]
            try:
                destination.deliver(payload)
            except Exception as exc:  # a destination must never break the request
                reason = exc if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
                logger.warning("delivery to %s failed: %s (messageId %s)", name, reason, payload.message_id)
                safe = False
        return safe

    def close(self) -> None:
        for destination in self.destinations.values():
            try:
                destination.close()
            except Exception:  # closing is best effort; report and go on with the rest
                logger.exception("closing destination %s failed", destination.name)
