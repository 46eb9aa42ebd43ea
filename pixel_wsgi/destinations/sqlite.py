"""The embedded event store: one SQLite table, safe with many worker processes.

WAL mode lets readers (``pixel-wsgi events``) run beside writers, and the workers
of a gunicorn server wait for each other's commits instead of failing. By default
(``journal = true``) an event is kept in the process's journal file before the answer
and committed with others a few milliseconds later (``pixel_wsgi.journal``: what a
``200`` then means, and how a killed process's events are recovered). With
``journal = false``, or when the journal cannot take an event, rows are written by
group commit (``pixel_wsgi.group_commit``): a request returns once the transaction
with its row has committed, and concurrent requests share one commit instead of
paying for one each. Either way there is one connection per process, opened on the
first event (never before gunicorn forks): a thread-per-request server cannot pile up
connections.

The table is kept lean for the insert: a rowid primary key without AUTOINCREMENT (no
``sqlite_sequence`` page written per commit) and no secondary index (each one is
another B-tree page per commit); readers go by ``id``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import DeliveryError
from ..group_commit import GroupCommitError, GroupCommitter
from ..journal import PROGRESS_SCHEMA, JournalUnavailable, StoreJournal, journal_folder
from ..options import Boolean, OptionsSchema, SQLiteFile
from ..resources import database_uri, open_wal_database
from .base import Destination, Payload

logger = logging.getLogger(__name__)

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    type TEXT NOT NULL,
    message_id TEXT NOT NULL,
    source TEXT NOT NULL,
    event TEXT NOT NULL
);
"""
    + PROGRESS_SCHEMA
)
INSERT = "INSERT INTO events (received_at, type, message_id, source, event) VALUES (?, ?, ?, ?, ?)"


def connect(path: str) -> sqlite3.Connection:
    return open_wal_database(path, SCHEMA)


COLUMNS = "id, received_at, type, message_id, source, event"


def iter_events(path: str, last: int | None = None, after: int = 0) -> Iterator[dict[str, Any]]:
    """The stored rows with an id above ``after``, oldest first (only the last ``last``
    of them, if given), read one at a time: a store of millions of events is never
    loaded at once."""
    connection = open_reader(path)
    try:
        yield from rows_after(connection, after, last)
    finally:
        connection.close()


def open_reader(path: str) -> sqlite3.Connection:
    """A read-only connection to the store at ``path`` (``FileNotFoundError`` if there is none)."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    return sqlite3.connect(database_uri(path, "ro"), uri=True)


def rows_after(connection: sqlite3.Connection, after: int = 0, last: int | None = None) -> Iterator[dict[str, Any]]:
    """The rows with an id above ``after``, oldest first (only the last ``last`` of them, if given)."""
    if last is None:
        cursor = connection.execute(f"SELECT {COLUMNS} FROM events WHERE id > ? ORDER BY id", (after,))
    else:
        cursor = connection.execute(
            f"SELECT * FROM (SELECT {COLUMNS} FROM events WHERE id > ? ORDER BY id DESC LIMIT ?) ORDER BY id", (after, last)
        )
    for row in cursor:
        yield {"id": row[0], "received_at": row[1], "type": row[2], "message_id": row[3], "source": row[4], "event": _event(row[5])}


def _event(text: str) -> Any:
    """The stored JSON, decoded; a row that is not JSON (written by some other program,
    or damaged) is shown as its text rather than ending the whole listing."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def recover_journals(path: str) -> int:
    """Commit into the store at ``path`` the events journaled by processes that have ended
    (a worker killed with ``kill -9``, a server that was never stopped cleanly); how many.
    Journals whose process still runs are left to it."""
    if not os.path.isdir(journal_folder(path)):
        return 0
    committer = GroupCommitter(path, SCHEMA, INSERT)
    try:
        return StoreJournal(committer).recover_orphans()
    finally:
        committer.close()


def read_events(path: str, last: int | None = None) -> list[dict[str, Any]]:
    """The stored rows, oldest first (the last ``last`` of them, if given), as a list."""
    return list(iter_events(path, last))


@dataclass(frozen=True)
class SQLiteOptions:
    path: str
    journal: bool


class SQLiteOptionsSchema(OptionsSchema):
    model = SQLiteOptions
    path = SQLiteFile(load_default="pixel-events.sqlite3")
    # true: an event is kept in the process's journal file before the answer and
    # committed with others a few milliseconds later; false: the answer waits for
    # the SQLite commit that holds it.
    journal = Boolean(load_default=True)


class SQLiteDestination(Destination):
    kind = "sqlite"
    Options = SQLiteOptionsSchema
    options: SQLiteOptions

    def __init__(self, name: str, options: SQLiteOptions) -> None:
        super().__init__(name, options)
        self.path = options.path
        # Nothing opened here: the connection opens on the first event of each process.
        self._writer = GroupCommitter(self.path, SCHEMA, INSERT)
        self._journal = StoreJournal(self._writer) if options.journal else None
        self._last_journal_problem: str | None = None

    def deliver(self, payload: Payload) -> None:
        self.deliver_within(payload, None)

    def deliver_within(self, payload: Payload, seconds: float | None) -> None:
        """Return once the event's row is in the journal or committed; waits at most ``seconds``."""
        event = payload.event
        row = (event.get("receivedAt", ""), payload.type, payload.message_id, payload.source, payload.text)
        if self._journal is not None:
            try:
                self._journal.add(row)
                return
            except JournalUnavailable as exc:
                self._journal_unavailable(str(exc))
        try:
            self._writer.insert(row, seconds)
        except GroupCommitError as exc:
            raise DeliveryError(str(exc)) from exc

    def _journal_unavailable(self, reason: str) -> None:
        # Once per reason: the store commits the events itself meanwhile, so nothing is lost.
        if reason != self._last_journal_problem:
            self._last_journal_problem = reason
            logger.warning("sqlite %s: %s; committing events directly", self.path, reason)

    def flush(self, timeout: float | None = None) -> bool:
        """Commit the events this process has journaled now (tests and scripts that read the
        store right after a request); ``False`` if the store failed first."""
        if self._journal is None:
            return True
        return self._journal.flush() if timeout is None else self._journal.flush(timeout)

    def close(self) -> None:
        """Commit the journaled and queued events, then close this process's connection and journal."""
        if self._journal is not None:
            self._journal.close()
        self._writer.close()
