"""Destination kinds by configuration ``type``, and the one function that finds a class."""

from __future__ import annotations

import importlib
from typing import Dict

from .base import DeliveryError, Destination, Payload

# Imported on demand so that a deployment that only stores to SQLite never imports
# requests, and a user's class is loaded only when named.
DESTINATION_TYPES: Dict[str, str] = {
    "webhook": "pixel_wsgi.destinations.webhook:WebhookDestination",
    "rudderstack": "pixel_wsgi.destinations.rudderstack:RudderStackDestination",
    "segment": "pixel_wsgi.destinations.segment:SegmentDestination",
    "jsonl": "pixel_wsgi.destinations.jsonl:JSONLinesDestination",
    "memory": "pixel_wsgi.destinations.memory:MemoryDestination",
    "sqlite": "pixel_wsgi.destinations.sqlite:SQLiteDestination",
}

__all__ = ["DESTINATION_TYPES", "DeliveryError", "Destination", "Payload", "resolve_destination_class"]


def resolve_destination_class(kind: str) -> type[Destination]:
    """The class for a ``type`` value: a built-in name or ``package.module:Class``.

    Raises ``ValueError`` saying what is wrong. A user's module is imported like
    gunicorn imports the app: from the current directory too (the ``pixel-wsgi`` console
    script puts it on ``sys.path``).
    """
    target = DESTINATION_TYPES.get(kind, kind)
    if ":" not in target:
        known = ", ".join(sorted(DESTINATION_TYPES))
        raise ValueError(f"unknown type {kind!r}: use one of {known}, or 'package.module:Class'")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} ({exc})") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Destination):
        raise ValueError(f"{target!r} is not a pixel_wsgi.destinations.Destination subclass")
    return cls
