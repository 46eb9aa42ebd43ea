"""Helpers for testing a site that serves the pixel: a config that keeps events in memory.

from pixel_wsgi.testing import memory_app
pixel, events = memory_app(write_key="test-key")
TestApp(PixelMiddleware(my_site, pixel)).get("/pixel/v1/track?...")
assert events[0]["event"] == "Signed Up"
"""

from __future__ import annotations

from typing import Any

from .app import PixelApp
from .destinations.memory import MemoryDestination

__all__ = ["MemoryDestination", "memory_app", "memory_config"]


def memory_config(write_key: str = "test-write-key", **source_options: Any) -> dict[str, Any]:
    """A config dict with one source and one ``memory`` destination named ``memory``.

    Source options (``errors_as_pixel=True``, ``infer_types=True``, …) go to the source;
    the top-level ones (``prefix``, ``response_body``, ``trusted_proxies``, ``limits``,
    ``cors_allow_origin``, ``dispatch``, ``spool``, ``segment_prefix``, ``fetchers``,
    ``dedupe``) go to the top of the config.
    """
    top_level = {key: source_options.pop(key) for key in list(source_options) if key in _TOP_LEVEL_OPTIONS}
    return {
        **top_level,
        "sources": [{"name": "test", "write_key": write_key, **source_options}],
        "destinations": {"memory": {"type": "memory"}},
    }


_TOP_LEVEL_OPTIONS = frozenset(
    {
        "prefix",
        "response_body",
        "trusted_proxies",
        "limits",
        "cors_allow_origin",
        "dispatch",
        "spool",
        "segment_prefix",
        "fetchers",
        "dedupe",
    }
)


def memory_app(write_key: str = "test-write-key", **options: Any) -> tuple[PixelApp, list[dict[str, Any]]]:
    """A ``PixelApp`` and the list its events arrive in."""
    app = PixelApp(memory_config(write_key, **options))
    destination = app.destination("memory")
    assert isinstance(destination, MemoryDestination)
    return app, destination.events
