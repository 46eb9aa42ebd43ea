"""Destination kinds by configuration ``type``, and the one function that builds them."""

from __future__ import annotations

import importlib
from typing import Dict

from ..config import DestinationConfig
from ..errors import ConfigError
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

__all__ = ["DESTINATION_TYPES", "Destination", "DeliveryError", "Payload", "build_destination", "validate_destination"]


def _resolve(kind: str) -> type:
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


def build_destination(config: DestinationConfig) -> Destination:
    try:
        cls = _resolve(config.type)
    except ValueError as exc:
        raise ConfigError(f"destinations.{config.name}.type: {exc}") from None
    return cls(config.name, config.options)  # type: ignore[no-any-return]


def validate_destination(config: DestinationConfig, errors: list[str]) -> None:
    """Build and discard: constructors only read options, so this opens nothing."""
    try:
        build_destination(config)
    except ConfigError as exc:
        errors.extend(exc.errors)
