"""The spool: events a destination did not take yet, in a SQLite file shared by every worker.

WAL mode and a busy timeout let every gunicorn worker process and thread add rows
while ``pixel-wsgi spool replay`` reads and removes them. Connections are opened on
first use, one per thread and per process, never in the constructor: a connection
made before gunicorn forks must not be used in a child. ``check()`` opens and closes
an existing file once at start-up, so an unusable spool is an error then, not a 503
later.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError
from .resources import BUSY_TIMEOUT_MS, PerThread, open_wal_database, wait_for_locks_at_most

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source TEXT NOT NULL,
    event TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    response TEXT,
    next_attempt_at REAL,
    dead INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS spool_destination ON spool (destination, dead, id);
"""
COLUMNS = (
    "id", "destination", "message_id", "source", "event", "attempts", "last_error", "response", "next_attempt_at", "dead", "created_at"
)  # fmt: skip
INSERT = (
    "INSERT INTO spool (destination, message_id, source, event, attempts, last_error, response, next_attempt_at, dead, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Rows read per query while replaying, so a large spool is never loaded at once.
PAGE_SIZE = 200


@dataclass
class SpooledEvent:
    """One row of the spool."""

    id: int
    destination: str
    message_id: str
    source: str
    event: str
    attempts: int
    last_error: str
    response: str | None
    next_attempt_at: float | None
    dead: bool
    created_at: float

    def decoded(self) -> dict[str, Any]:
        return json.loads(self.event)  # type: ignore[no-any-return]

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> SpooledEvent:
        row_id, destination, message_id, source, event, attempts, last_error, response, next_attempt_at, dead, created_at = row
        return cls(row_id, destination, message_id, source, event, attempts, last_error, response, next_attempt_at, bool(dead), created_at)


class Spool:
    """Undelivered events per destination, with attempts, last error and next attempt time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._connections = PerThread(lambda: open_wal_database(self.path, SCHEMA), sqlite3.Connection.close)

    def check(self) -> None:
        """Make sure the spool can be used, opening and closing the file if it exists.

        Raises ``ConfigError`` naming ``spool.path`` for a file that is not a SQLite
        database, a ``spool`` table of another shape, or a file or directory that
        cannot be written. A missing file is not created here (it is created on the
        first event that needs it), so an app that never spools leaves no file behind.
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ConfigError(f"spool.path: directory {directory} does not exist")
        # The WAL and shared-memory files are created beside the database.
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"spool.path: directory {directory} is not writable")
        if not os.path.exists(self.path):
            return
        try:
            connection = sqlite3.connect(Path(os.path.abspath(self.path)).as_uri() + "?mode=rw", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
            try:
                columns = [row[1] for row in connection.execute("PRAGMA table_info(spool)")]
                if columns and tuple(columns) != COLUMNS:
                    raise ConfigError(f"spool.path: {self.path} has a 'spool' table of another shape ({', '.join(columns)})")
                # Taking the write lock proves the file is writable without changing it.
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("ROLLBACK")
            finally:
                connection.close()
        except sqlite3.Error as exc:
            raise ConfigError(f"spool.path: {self.path} cannot be used as a spool ({exc})") from None

    def _connection(self) -> sqlite3.Connection:
        return self._connections.get()

    # -- the request path ----------------------------------------------------------

    def add(
        self,
        destination: str,
        message_id: str,
        source: str,
        body: bytes,
        *,
        attempts: int,
        error: str,
        response: str | None = None,
        next_attempt_at: float | None = None,
        dead: bool = False,
        wait: float | None = None,
    ) -> None:
        """Store one event for one destination; raises ``sqlite3.Error`` or ``OSError`` when it cannot.

        ``wait``: seconds to wait at most for another process's lock (the request's deadline).
        """
        connection = self._connection()
        if wait is not None:
            wait_for_locks_at_most(connection, wait)
        try:
            connection.execute(
                INSERT,
                (destination, message_id, source, body.decode("utf-8"), attempts, error, response, next_attempt_at, int(dead), time.time()),
            )
        finally:
            if wait is not None:
                # Other uses of this thread's connection (counts, replay) wait as usual.
                wait_for_locks_at_most(connection, None)

    # -- replay and inspection -----------------------------------------------------

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{destination: (waiting, dead)}``."""
        rows = (
            self._connection()
            .execute("SELECT destination, SUM(dead = 0), SUM(dead != 0) FROM spool GROUP BY destination ORDER BY destination")
            .fetchall()
        )
        return {name: (int(waiting), int(dead)) for name, waiting, dead in rows}

    def events(self, destination: str, *, dead: bool = False) -> Iterator[SpooledEvent]:
        """The rows of one destination, oldest first; with ``dead``, the dead ones too.

        Read a page at a time by id, so rows added meanwhile by the server are seen
        and rows removed meanwhile are simply not there.
        """
        last = 0
        condition = "" if dead else " AND dead = 0"
        while True:
            rows = (
                self._connection()
                .execute(
                    f"SELECT {', '.join(COLUMNS)} FROM spool WHERE destination = ? AND id > ?{condition} ORDER BY id LIMIT ?",
                    (destination, last, PAGE_SIZE),
                )
                .fetchall()
            )
            if not rows:
                return
            for row in rows:
                yield SpooledEvent.from_row(row)
            last = rows[-1][0]

    def remove(self, row_id: int) -> None:
        self._connection().execute("DELETE FROM spool WHERE id = ?", (row_id,))

    def record_failure(
        self, row_id: int, *, attempts: int, error: str, response: str | None, next_attempt_at: float | None, dead: bool
    ) -> None:
        self._connection().execute(
            "UPDATE spool SET attempts = attempts + ?, last_error = ?, response = ?, next_attempt_at = ?, dead = ? WHERE id = ?",
            (attempts, error, response, next_attempt_at, int(dead), row_id),
        )

    def all(self) -> list[SpooledEvent]:
        """Every row, oldest first (tests and small spools only)."""
        rows = self._connection().execute(f"SELECT {', '.join(COLUMNS)} FROM spool ORDER BY id").fetchall()
        return [SpooledEvent.from_row(row) for row in rows]

    def close(self) -> None:
        self._connections.close()

    def __repr__(self) -> str:
        return f"<Spool {self.path}>"
