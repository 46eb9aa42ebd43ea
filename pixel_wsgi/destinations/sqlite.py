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
import threading
from typing import Any

from ..config import OptionReader
from ..errors import DeliveryError
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
# Milliseconds a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_MS = 5000


def connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    try:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable across application crashes in WAL mode; only a power loss can
        # take the last transactions, and FULL would cost an fsync per pixel.
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.executescript(SCHEMA)
    except BaseException:
        connection.close()
        raise
    return connection


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
        self._local = threading.local()
        # Every connection opened, with the process that opened it, so close() can
        # close those of all threads (and never one inherited through a fork).
        self._connections: list[tuple[int, sqlite3.Connection]] = []
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != pid:
            connection = connect(self.path)
            self._local.connection, self._local.pid = connection, pid
            with self._lock:
                self._connections.append((pid, connection))
        return connection

    def deliver(self, payload: Payload) -> None:
        event = payload.event
        try:
            self._connection().execute(
                INSERT,
                (event.get("receivedAt", ""), payload.type, payload.message_id, payload.source, payload.body.decode("utf-8")),
            )
        except sqlite3.Error as exc:
            raise DeliveryError(f"sqlite {self.path}: {exc}") from exc

    def close(self) -> None:
        pid = os.getpid()
        with self._lock:
            connections, self._connections = self._connections, []
        for owner, connection in connections:
            if owner == pid:
                connection.close()
        self._local = threading.local()
