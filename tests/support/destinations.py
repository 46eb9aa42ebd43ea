"""User-defined destination classes, loaded by "package.module:Class" in test configs."""

from __future__ import annotations

from pixel_wsgi.destinations import DeliveryError, Destination, Payload


class AlwaysFailingDestination(Destination):
    """Refuses every event as a permanent failure."""

    def deliver(self, payload: Payload) -> None:
        raise DeliveryError("refused by test destination", retryable=False, status=400)
