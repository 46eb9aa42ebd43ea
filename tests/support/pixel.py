"""Small helpers for pixel requests in tests."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Tuple, Union
from urllib.parse import quote

# Fields the server adds to every event (README, "Fields the server adds"): removed before comparing payloads.
SERVER_FIELDS = ("messageId", "originalTimestamp", "sentAt", "receivedAt", "channel", "integrations")
SERVER_CONTEXT_FIELDS = ("ip", "library")

Params = Union[Mapping[str, str], Iterable[Tuple[str, str]]]


def query(params: Params) -> str:
    """Percent-encode parameters the way a browser would (keys keep their dots and brackets)."""
    items = params.items() if isinstance(params, Mapping) else params
    return "&".join(f"{quote(key, safe='.[]')}={quote(value, safe='')}" for key, value in items)


def without_server_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    stripped = {key: value for key, value in event.items() if key not in SERVER_FIELDS}
    context = {key: value for key, value in stripped.get("context", {}).items() if key not in SERVER_CONTEXT_FIELDS}
    if context:
        stripped["context"] = context
    else:
        stripped.pop("context", None)
    return stripped
