"""The spool: events a destination did not take yet, in a SQLite file shared by every worker.

WAL mode and a busy timeout let every gunicorn worker process and thread add rows
while ``pixel-wsgi spool replay`` reads and removes them. Connections are opened on
first use, one per thread and per process, never in the constructor: a connection
made before gunicorn forks must not be used in a child. ``check()`` opens and closes
an existing file once at start-up, so an unusable spool is an error then, not a 503
later.

The spool is bounded: each connection sets SQLite's ``max_page_count`` from
``max_bytes``, so SQLite itself refuses an insert past the bound (``SpoolFull``) and
the request path never measures the file. ``shrink()`` (run after each drain) hands
freed pages back to the file system (incremental auto-vacuum) and truncates the
write-ahead log, so a drained spool is small again.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from .errors import ConfigError
from .resources import BUSY_TIMEOUT_MS, PerThread, build_new_database, database_uri, open_wal_database, wait_for_locks_at_most

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
DEFAULT_MAX_BYTES = 1 << 30
# A checkpoint leaves the write-ahead log at most this long (SQLite keeps its largest
# size otherwise: 30 MB after a burst of spooling, for ever).
JOURNAL_SIZE_LIMIT = 4 << 20
# The largest spool (in live rows) that shrink() rebuilds to turn incremental vacuum
# on: well under a second of holding the write lock.
REBUILD_MAX_BYTES = 8 << 20
# Pages freed per transaction by shrink(): 8 MB with 4 KiB pages.
VACUUM_STEP_PAGES = 2048
CHECKPOINT_BUSY_TIMEOUT_MS = 100


class SpoolFull(Exception):
    """The spool is at ``max_bytes`` (or the disk is full): the event was not stored."""


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


def spool_file_problem(path: str) -> str | None:
    """Why ``path`` cannot be used as the spool, or ``None``.

    Finds a folder that does not exist or cannot be written, a file that is not a
    SQLite database, a ``spool`` table of another shape, and a file that cannot be
    written. An existing file is opened and closed once; a missing one is not created
    here (it is created on the first event that needs it), so an app that never
    spools leaves no file behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"the folder {directory} does not exist"
    # The WAL and shared-memory files are created beside the database.
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"the folder {directory} is not writable"
    if not os.path.exists(path):
        return None
    if not os.access(path, os.W_OK):
        return f"{path} is not writable"
    if os.path.getsize(path) == 0:
        # Empty (made by the operator, or being set up by a worker this instant): it is
        # set up on first use, so opening it here could only get in the way.
        return None
    try:
        connection = sqlite3.connect(database_uri(path, "rw"), uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            columns = [row[1] for row in connection.execute("PRAGMA table_info(spool)")]
            if columns and tuple(columns) != COLUMNS:
                return f"{path} has a 'spool' table of another shape ({', '.join(columns)})"
            # Taking the write lock proves the file is writable without changing it.
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.Error as exc:
        return f"{path} cannot be used as a spool ({exc})"
    return None


class Spool:
    """Undelivered events per destination, with attempts, last error and next attempt time."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        # Whether this process last found the spool full: the WARNING is logged on the
        # change, not once per refused event (each of those is logged as a 503).
        self._was_full = False
        self._connections = PerThread(self._open, sqlite3.Connection.close)

    def _open(self) -> sqlite3.Connection:
        connection = open_wal_database(self.path, SCHEMA, incremental_vacuum=True)
        try:
            page_size = connection.execute("PRAGMA page_size").fetchone()[0]
            # Both are per connection, not stored in the file: set on every open.
            connection.execute(f"PRAGMA max_page_count = {max(1, self.max_bytes // page_size)}")
            connection.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        except BaseException:
            connection.close()
            raise
        return connection

    def check(self) -> None:
        """Raise ``ConfigError`` naming ``spool.path`` if the spool cannot be used."""
        problem = spool_file_problem(self.path)
        if problem:
            raise ConfigError(f"spool.path: {problem}")

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
        """Store one event for one destination.

        ``wait``: seconds to wait at most for another process's lock (the request's
        deadline). Raises ``SpoolFull`` at the bound, ``sqlite3.Error`` or ``OSError``
        when it cannot store the event otherwise.
        """
        if wait is not None:
            # A new file is set up within the request's time too, not the busy timeout.
            build_new_database(self.path, SCHEMA, incremental_vacuum=True, wait=wait)
        connection = self._connection()
        if wait is not None:
            wait_for_locks_at_most(connection, wait)
        try:
            connection.execute(
                INSERT,
                (destination, message_id, source, body.decode("utf-8"), attempts, error, response, next_attempt_at, int(dead), time.time()),
            )
        except sqlite3.OperationalError as exc:
            # sqlite_errorname is new in Python 3.11; before, the message is all there is.
            name = getattr(exc, "sqlite_errorname", "")
            if name == "SQLITE_FULL" or "database or disk is full" in str(exc):
                raise self._full(connection) from None
            if name == "SQLITE_IOERR_WRITE":
                # What a file size limit (EFBIG) or some full file systems give: no room either.
                raise self._full(connection, f"not writable ({exc}: out of disk space, over a file size limit, or failing)") from None
            raise
        finally:
            if wait is not None:
                # Other uses of this thread's connection (counts, replay) wait as usual.
                wait_for_locks_at_most(connection, None)
        if self._was_full:
            self._was_full = False
            logger.warning("spool %s has room again: events are spooled again", self.path)

    def _full(self, connection: sqlite3.Connection, reason: str = "") -> SpoolFull:
        """Why the insert found no room: the bound, or the disk. Logged once per process until there is room again."""
        if not reason:
            try:
                pages, limit = (connection.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "max_page_count"))
                at_bound = pages >= limit - 1
            except sqlite3.Error:
                at_bound = False
            reason = f"at its bound of {self.max_bytes} bytes ([spool] max_bytes)" if at_bound else "out of disk space"
        if not self._was_full:
            self._was_full = True
            logger.warning("spool %s is %s: events that need it are answered 503 until there is room", self.path, reason)
        return SpoolFull(f"spool {self.path} is {reason}")

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
        """The rows of one destination, oldest first; with ``dead``, the dead ones too."""
        for page in self.pages(destination, dead=dead):
            yield from page

    def pages(
        self, destination: str, *, dead: bool = False, due_at: float | None = None, size: int = PAGE_SIZE
    ) -> Iterator[list[SpooledEvent]]:
        """The rows of one destination, oldest first, ``size`` at a time.

        With ``dead``, the dead ones too; with ``due_at``, only rows whose next attempt
        time has come by then. Read a page at a time by id, so a large spool is never
        loaded at once, rows added meanwhile by the server are seen and rows removed
        meanwhile are simply not there.
        """
        last = 0
        condition = "" if dead else " AND dead = 0"
        arguments: tuple[Any, ...] = ()
        if due_at is not None:
            condition += " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
            arguments = (due_at,)
        query = f"SELECT {', '.join(COLUMNS)} FROM spool WHERE destination = ? AND id > ?{condition} ORDER BY id LIMIT ?"
        while True:
            rows = self._connection().execute(query, (destination, last, *arguments, size)).fetchall()
            if not rows:
                return
            yield [SpooledEvent.from_row(row) for row in rows]
            last = rows[-1][0]

    def remove(self, row_id: int) -> None:
        self._connection().execute("DELETE FROM spool WHERE id = ?", (row_id,))

    def remove_all(self, row_ids: Iterable[int]) -> None:
        """Remove these rows in one transaction: one commit for a page of delivered events."""
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany("DELETE FROM spool WHERE id = ?", ((row_id,) for row_id in row_ids))
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def record_failure(
        self, row_id: int, *, attempts: int, error: str, response: str | None, next_attempt_at: float | None, dead: bool
    ) -> None:
        self._connection().execute(
            "UPDATE spool SET attempts = attempts + ?, last_error = ?, response = ?, next_attempt_at = ?, dead = ? WHERE id = ?",
            (attempts, error, response, next_attempt_at, int(dead), row_id),
        )

    def size(self) -> tuple[int, int]:
        """Bytes on disk: ``(database file, write-ahead log)``; 0 for a file that is not there."""
        return _file_size(self.path), _file_size(self.path + "-wal")

    def shrink(self) -> None:
        """Give freed pages back to the file system and truncate the write-ahead log (after a drain).

        Best effort: a checkpoint cannot truncate while another process reads, and the
        next drain tries again. Freed pages are released a few megabytes per
        transaction, so events spooled meanwhile wait milliseconds, not seconds.
        """
        connection = self._connection()
        if _pragma(connection, "auto_vacuum") == 0:
            # A spool file made by an older version, without incremental vacuum (new ones
            # have it from the start). A rebuild turns it on; it rewrites the live rows
            # under the write lock, so only while they are few.
            page_size, pages, free = (_pragma(connection, name) for name in ("page_size", "page_count", "freelist_count"))
            if free and (pages - free) * page_size <= REBUILD_MAX_BYTES:
                connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
                connection.execute("VACUUM")
        else:
            for _ in range(-(-_pragma(connection, "freelist_count") // VACUUM_STEP_PAGES)):
                # executescript runs it to the end: execute() would step once (one page),
                # since the statement returns no rows.
                connection.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES});")
        # A truncating checkpoint holds new writers back while it waits for readers of
        # older snapshots: wait briefly, so a pixel being spooled meanwhile waits
        # milliseconds; a checkpoint that gives up is tried again after the next drain.
        connection.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_TIMEOUT_MS}")
        try:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def all(self) -> list[SpooledEvent]:
        """Every row, oldest first (tests and small spools only)."""
        rows = self._connection().execute(f"SELECT {', '.join(COLUMNS)} FROM spool ORDER BY id").fetchall()
        return [SpooledEvent.from_row(row) for row in rows]

    def close(self) -> None:
        self._connections.close()

    def __repr__(self) -> str:
        return f"<Spool {self.path}>"


def _pragma(connection: sqlite3.Connection, name: str) -> int:
    return int(connection.execute(f"PRAGMA {name}").fetchone()[0])


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
