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
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import DeliveryError
from ..options import OptionsSchema, WritableFile
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


COLUMNS = "id, received_at, type, message_id, source, event"


def iter_events(path: str, last: int | None = None, after: int = 0) -> Iterator[dict[str, Any]]:
    """The stored rows with an id above ``after``, oldest first (only the last ``last``
    of them, if given), read one at a time: a store of millions of events is never
    loaded at once."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if last is None:
            cursor = connection.execute(f"SELECT {COLUMNS} FROM events WHERE id > ? ORDER BY id", (after,))
        else:
            cursor = connection.execute(
                f"SELECT * FROM (SELECT {COLUMNS} FROM events WHERE id > ? ORDER BY id DESC LIMIT ?) ORDER BY id", (after, last)
            )
        for row in cursor:
            yield {"id": row[0], "received_at": row[1], "type": row[2], "message_id": row[3], "source": row[4], "event": json.loads(row[5])}
    finally:
        connection.close()


def read_events(path: str, last: int | None = None) -> list[dict[str, Any]]:
    """The stored rows, oldest first (the last ``last`` of them, if given), as a list."""
    return list(iter_events(path, last))


@dataclass(frozen=True)
class SQLiteOptions:
    path: str


class SQLiteOptionsSchema(OptionsSchema):
    model = SQLiteOptions
    path = WritableFile(load_default="pixel-events.sqlite3")


class SQLiteDestination(Destination):
    kind = "sqlite"
    Options = SQLiteOptionsSchema
    options: SQLiteOptions

    def __init__(self, name: str, options: SQLiteOptions) -> None:
        super().__init__(name, options)
        self.path = options.path
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
        wait_for_locks_at_most(self._connections.get(), seconds)
        self.deliver(payload)

    def close(self) -> None:
        self._connections.close()
