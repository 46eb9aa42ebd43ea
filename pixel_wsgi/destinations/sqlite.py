"""The embedded event store: one SQLite table, safe with many worker processes.

WAL mode lets readers (``pixel-wsgi events``) run beside writers, and the busy
timeout makes concurrent writers from several gunicorn workers wait for each other
instead of failing. One connection per thread, opened on first use: a connection
made before gunicorn forks must never be used in a child.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from ..config import OptionReader
from ..errors import DeliveryError
from ..resources import PerThread, open_wal_database, wait_for_locks_at_most
from .base import Destination, Payload

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    type TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_message_id ON events (message_id);
"""
INSERT = "INSERT INTO events (received_at, type, message_id, source, event) VALUES (?, ?, ?, ?, ?)"


def connect(path: str) -> sqlite3.Connection:
    return open_wal_database(path, SCHEMA)


def read_events(path: str, last: int | None = None) -> list[dict[str, Any]]:
    """The stored rows, oldest first (the last ``last`` of them, if given)."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if last is None:
            rows = connection.execute("SELECT id, received_at, type, message_id, source, event FROM events ORDER BY id").fetchall()
        else:
            rows = connection.execute(
                "SELECT * FROM (SELECT id, received_at, type, message_id, source, event FROM events ORDER BY id DESC LIMIT ?) ORDER BY id",
                (last,),
            ).fetchall()
    finally:
        connection.close()
    return [
        {"id": row[0], "received_at": row[1], "type": row[2], "message_id": row[3], "source": row[4], "event": json.loads(row[5])}
        for row in rows
    ]


class SQLiteDestination(Destination):
    kind = "sqlite"

    def configure(self, options: OptionReader) -> None:
        self.path = options.nonempty_string("path", "pixel-events.sqlite3")
        self._connections = PerThread(lambda: connect(self.path), sqlite3.Connection.close)

    def deliver(self, payload: Payload) -> None:
        event = payload.event
        try:
            self._connections.get().execute(
                INSERT,
                (event.get("receivedAt", ""), payload.type, payload.message_id, payload.source, payload.body.decode("utf-8")),
            )
        except sqlite3.Error as exc:
            raise DeliveryError(f"sqlite {self.path}: {exc}") from exc

    def deliver_within(self, payload: Payload, seconds: float | None) -> None:
        # Another process holding the database may hold this request only until its deadline.
        connection = self._connections.get()
        wait_for_locks_at_most(connection, seconds)
        try:
            self.deliver(payload)
        finally:
            wait_for_locks_at_most(connection, None)

    def close(self) -> None:
        self._connections.close()
