"""The messageIds each source accepted recently, shared by every worker process.

A source with ``dedupe_window`` answers a repeated ``messageId`` with 200 and does not
deliver it again: an email opened twice from a template that carries its own
``messageId`` (or a prefetch followed by the real open, a scanner retrying, a client
that double-fires) counts once. Worker processes share the answer through one small
SQLite file (WAL, busy timeout), created ``0600`` on first use beside the spool unless
``[dedupe] path`` says otherwise.

The file follows deletion and replacement, as ``logging.handlers.WatchedFileHandler``
does: an operator who removes it to start afresh gets a new one in every worker at
their next claim, rather than each worker remembering into a file nobody else sees.

The rule, and why: a request *claims* its ``(source, messageId)`` before dispatch, in
one statement (an insert, or taking over a row whose window has ended), so that of two
requests racing in two processes exactly one delivers. If that event is then neither
delivered nor spooled (the 503 case), the claim is *released*, so the client's retry
is delivered rather than swallowed as a duplicate. If the file itself fails, the
event is delivered anyway: a duplicate is better than a lost event.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass

from .errors import ConfigError
from .resources import PerThread, open_wal_database

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (source, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_expires ON seen (expires_at);
"""
# Inserts the claim, or takes over a row whose window has ended; changes() says which.
CLAIM = (
    "INSERT INTO seen (source, message_id, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (source, message_id) DO UPDATE SET expires_at = excluded.expires_at WHERE seen.expires_at <= ?"
)
# How long a claim waits for another process's write before giving up and delivering
# anyway: well inside the dispatch budget (3 s by default), and far longer than a claim
# takes, so only a stuck writer (a backup holding a lock) makes duplicates.
BUSY_TIMEOUT_MS = 1000
# Expired rows are removed every this many claims per process, so the file stays the
# size of one window's traffic without a timer thread.
PURGE_EVERY = 1000


def default_path(spool_path: str) -> str:
    """Beside the spool: every worker that shares a spool shares its messageIds."""
    return spool_path + ".dedupe"


# Seconds a claim waits for another process setting up a new file: the claim comes
# before dispatch, out of the request's budget, and a failed one costs only the
# de-duplication of that event (it is delivered anyway).
SETUP_WAIT = 0.5


@dataclass
class _Handle:
    """One thread's connection and the identity (device, inode) of the file it opened."""

    connection: sqlite3.Connection
    identity: tuple[int, int]


class DedupeStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._connections = PerThread(self._open, lambda handle: handle.connection.close())
        # Not locked: an approximate count only decides when to purge.
        self._claims = 0

    def check(self) -> None:
        """Start-up check: the folder exists and is writable (the file is made on first use)."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ConfigError(f"dedupe.path: directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"dedupe.path: directory {directory} is not writable")

    def _open(self) -> _Handle:
        # Never a descriptor of our own on the file: closing it would drop the POSIX
        # locks SQLite holds on it for this process's other threads (a "disk I/O
        # error" when the file was removed and every thread opened it again at once).
        connection = open_wal_database(self.path, SCHEMA, setup_wait=SETUP_WAIT)
        try:
            status = os.stat(self.path)
        except BaseException:
            connection.close()
            raise
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return _Handle(connection, (status.st_dev, status.st_ino))

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, reopened if the file was deleted or replaced."""
        handle = self._connections.get()
        try:
            status = os.stat(self.path)
            current = (status.st_dev, status.st_ino)
        except FileNotFoundError:
            current = None
        if current != handle.identity:
            logger.warning("dedupe file %s was removed or replaced: reopening it", self.path)
            handle.connection.close()
            fresh = self._open()
            handle.connection, handle.identity = fresh.connection, fresh.identity
        return handle.connection

    def claim(self, source: str, message_id: str, window: float, now: float | None = None) -> bool:
        """``True``: first time within the window, deliver it; ``False``: a duplicate.

        Raises ``sqlite3.Error`` or ``OSError`` when the file cannot be used.
        """
        now = time.time() if now is None else now
        connection = self._connection()
        cursor = connection.execute(CLAIM, (source, message_id, now + window, now))
        self._claims += 1
        if self._claims % PURGE_EVERY == 0:
            connection.execute("DELETE FROM seen WHERE expires_at <= ?", (now,))
        return cursor.rowcount == 1

    def release(self, source: str, message_id: str) -> None:
        """Forget a claim whose event was lost, so that a retry is delivered."""
        self._connection().execute("DELETE FROM seen WHERE source = ? AND message_id = ?", (source, message_id))

    def close(self) -> None:
        self._connections.close()

    def __repr__(self) -> str:
        return f"<DedupeStore {self.path}>"
