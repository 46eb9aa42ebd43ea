"""Configs and requests for delivery tests: one source, HTTP destinations, a spool in tmp."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

WRITE_KEY = "delivery-write-key"


def spooled_message_ids(path: Path) -> set[str]:
    """The messageIds a spool file holds, read straight from SQLite (not through ``Spool``)."""
    if not path.exists():
        return set()
    connection = sqlite3.connect(path)
    try:
        return {row[0] for row in connection.execute("SELECT message_id FROM spool")}
    finally:
        connection.close()


def delivery_config(tmp_path: Path, destinations: dict[str, dict[str, Any]], **dispatch: Any) -> dict[str, Any]:
    """A config with one source ``web`` sending to ``destinations``, its spool under ``tmp_path``."""
    return {
        "sources": [{"name": "web", "write_key": WRITE_KEY}],
        "destinations": destinations,
        "spool": {"path": str(tmp_path / "spool.sqlite3")},
        "dispatch": {"budget": 2.0, "breaker_failures": 5, "breaker_cooldown": 30.0, **dispatch},
    }


def track_url(message_id: str, prefix: str = "/pixel/v1", **params: str) -> str:
    query = {"writeKey": WRITE_KEY, "anonymousId": "anon-1", "event": "Opened", "messageId": message_id, **params}
    return f"{prefix}/track?{urlencode(query)}"
