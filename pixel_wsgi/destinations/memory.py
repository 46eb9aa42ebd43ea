"""Keeps events in a list: for tests of the app and of a user's own site."""

from __future__ import annotations

from typing import Any

from .base import Destination, Payload


class MemoryDestination(Destination):
    kind = "memory"

    def __init__(self, name: str, options: Any = None) -> None:
        super().__init__(name, options)
        self.events: list[dict[str, Any]] = []

    def deliver(self, payload: Payload) -> None:
        # list.append is atomic under the GIL: safe from gthread workers without a lock.
        self.events.append(dict(payload.event))

    def clear(self) -> None:
        self.events.clear()
