"""Group commit: rows from many request threads written to SQLite in few transactions.

A SQLite commit costs far more than the insert it carries (the write lock, the WAL
frames of every page touched, the shared-memory index), so a store that commits each
event on its own spends most of a request there; and threads that each take SQLite's
write lock in turn wait for each other in SQLite's busy handler, which sleeps in
steps of milliseconds. Here one commit at a time runs per process, on one
connection, and it runs on a request's own thread (handing a row to another thread
and waking up again costs about as much as the commit itself):

- a request that finds no commit under way and nobody queued commits its own row;
- a request that finds a commit under way queues its row and waits. Whoever holds
  the commit turn, when done, takes every queued row into one more transaction and
  wakes their requests. No request waits for a timer, and under load the batches
  grow by themselves.

The rules:

- **A successful ``insert`` means stored**: it returns only after the COMMIT that
  included the row (the row is then visible to every other connection and process).
- **A failed commit fails exactly the rows it carried**: each of their requests gets
  ``GroupCommitError``; rows queued later go into the next transaction. When a batch
  fails for a reason that belongs to one row (a constraint), the rows are retried
  one by one so that only that row's request fails.
- **A request never waits longer than its ``timeout``**: it then gets
  ``GroupCommitTimeout``; a commit waiting for another process's write lock tries
  again only while the requests of its rows still wait. A row given up on is left out if its transaction has not
  inserted it yet; if it has, the row may still be committed (the caller may store
  it twice, which is at-least-once delivery; it is never lost).
- **No row is stranded**: a request that queues its row then tries to take the turn
  itself, and whoever gives the turn up looks at the queue again, so a queued row
  always has someone to commit it.
- **Nothing is opened in the constructor**: the connection opens on the first
  ``insert`` of each process (gunicorn forks after building the app); there is one
  connection per process whatever the number of request threads, so a
  thread-per-request server cannot pile up connections.
- **A moved or deleted file is noticed**: within ``FILE_CHECK_INTERVAL`` the next
  commit opens a new file at ``path`` (an operator archiving the store), instead of
  writing on into a file nobody can find.
- **``close()`` drains**: rows queued before it are committed, then the connection is
  closed; a later ``insert`` opens a new one.
- **Checkpoints are off the request path**: SQLite's automatic checkpoint would copy
  the WAL into the database inside whichever commit crosses its threshold (several
  milliseconds, once every few thousand events: the slowest requests). The store's
  connection turns it off, and every ``CHECKPOINT_EVERY`` commits a background thread
  of the process (started then) checkpoints on a connection of its own: PASSIVE
  first (it blocks no writer or reader, and SQLite releases the GIL while it copies),
  then RESTART, which holds new writers back for the last few frames, so that the WAL
  starts again from its beginning and stays a few megabytes.
- **Worker processes wait for each other's commit here, not in SQLite**: the store's
  connection has no busy timeout, so a commit that finds another process's write
  lock fails at once ("database is locked") and is tried again, at once for a few
  hundred microseconds (another commit ends within tens of them), then after pauses
  from 50 µs, until its requests' time is up. SQLite's busy handler would sleep 1, 2,
  5 ms and more at each collision; a lock file taken around every commit (what this
  module did before) cost two more system calls per commit, each a chance for another
  request thread to take the GIL from the committing one.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from _thread import allocate_lock
from queue import Empty, SimpleQueue
from typing import Any, Callable, Sequence

from .resources import BUSY_TIMEOUT_MS, Backoff, build_new_database, database_uri, open_wal_database

logger = logging.getLogger(__name__)

# Rows per transaction at most: bounds how long one commit holds the write lock
# (other worker processes wait for it) and how much one failure takes down.
MAX_BATCH = 500
# How long ``insert`` waits when its caller gives no limit.
DEFAULT_TIMEOUT = 30.0
# How long ``close()`` waits for the checkpointer thread to end.
CLOSE_TIMEOUT = 10.0
# Seconds between two looks at whether ``path`` is still the file being written
# (a ``stat``): a store renamed or deleted gets a new file within this time.
FILE_CHECK_INTERVAL = 1.0
# Commits between two checkpoints. Each checkpoint costs a connection, two fsyncs and
# a copy of every page written since the last one (a page rewritten by ten commits is
# copied once), so rarer checkpoints cost less per event: at 250 commits they took
# 7 µs of CPU per event, at 1000 about 2. At one or two 4 KB frames per commit the WAL
# peaks near 6 MB, the size SQLite's own default (1000 frames) allows.
CHECKPOINT_EVERY = 1000
# How long the end of a checkpoint tries to get between the other processes' commits
# and past readers of old snapshots (``pixel-wsgi events``) before it is left for the
# next one.
CHECKPOINT_LOCK_TIMEOUT = 0.5
# A commit that finds the write lock taken tries again at once for this long (another
# process's commit holds it for tens of microseconds), then after pauses that start at
# FIRST_PAUSE and double up to LONGEST_PAUSE. A sleep of 50 µs takes 100-200 µs on
# Linux (timer slack and wake-up), so the first retries do not sleep.
RETRY_AT_ONCE_FOR = 0.0003
FIRST_PAUSE = 0.00005
LONGEST_PAUSE = 0.002
# SQLite's result code for a lock held by another connection (the low byte of the
# extended code; "database is locked" in the message on Python < 3.11).
SQLITE_BUSY = 5
# Errors that belong to one row, not to the database: retrying the batch row by
# row then commits every row but the offending one.
ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, sqlite3.ProgrammingError)

Row = Sequence[Any]


class GroupCommitError(Exception):
    """The row was not stored: the transaction that carried it failed."""


class GroupCommitTimeout(GroupCommitError):
    """The row's commit did not complete within the caller's timeout."""


def describe(error: Exception) -> str:
    return str(error) or type(error).__name__


class _Pending:
    """One queued row and the lock its request thread waits on."""

    __slots__ = ("row", "deadline", "done", "error", "cancelled")

    def __init__(self, row: Row, deadline: float) -> None:
        self.row = row
        # time.monotonic() after which its request no longer waits.
        self.deadline = deadline
        # A bare lock, taken now and released by the thread that commits the row:
        # the cheapest one-shot signal between two threads (an Event builds a Condition).
        self.done = allocate_lock()
        self.done.acquire()
        self.error: str | None = None
        self.cancelled = False


class GroupCommitter:
    """Inserts rows into the SQLite database at ``path``: one commit at a time per process.

    ``schema`` is applied when the connection opens (``CREATE ... IF NOT EXISTS``);
    ``insert_sql`` is the parameterized INSERT each row is executed with.
    """

    def __init__(
        self,
        path: str,
        schema: str,
        insert_sql: str,
        *,
        max_batch: int = MAX_BATCH,
        connect: Callable[[str, str], sqlite3.Connection] = open_wal_database,
    ) -> None:
        self.path = path
        self.schema = schema
        self.insert_sql = insert_sql
        self.max_batch = max_batch
        self._connect = connect
        # The turn to commit: held for one transaction (and opening the connection).
        # Requests never block on it; they queue their row instead.
        self._commit_lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._connection_pid: int | None = None
        # The file the connection writes to (device, inode), looked at again at most
        # once per FILE_CHECK_INTERVAL.
        self._file_identity: tuple[int, int] | None = None
        self._file_checked_at = 0.0
        # Rows waiting for the turn, per process (made on first use, after the fork).
        self._queue: SimpleQueue[_Pending] | None = None
        self._queue_pid: int | None = None
        # Taken to make the queue or start and stop the checkpointer, never per row.
        self._lifecycle = threading.Lock()
        # The checkpointer thread of this process, woken every CHECKPOINT_EVERY commits.
        self._commits_since_checkpoint = 0
        self._checkpoint_wanted: threading.Event | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpointer_pid: int | None = None

    # -- the request path ------------------------------------------------------

    def insert(self, row: Row, timeout: float | None = None) -> None:
        """Store ``row``; return once it is committed, or raise ``GroupCommitError``."""
        wait = DEFAULT_TIMEOUT if timeout is None else max(0.0, timeout)
        queue = self._queue if self._queue_pid == os.getpid() else None
        if queue is None:
            queue = self._new_queue()
        if queue.empty() and self._commit_lock.acquire(blocking=False):
            # Nobody committing and nobody queued: this thread commits its own row.
            try:
                error = self._commit_lone_row(row, wait)
            finally:
                self._commit_lock.release()
            self._serve(queue)
            if error is not None:
                raise GroupCommitError(f"sqlite {self.path}: {describe(error)}") from error
            return
        pending = _Pending(row, time.monotonic() + wait)
        queue.put(pending)
        # The turn may have been given up between the look above and the put.
        self._serve(queue)
        if not pending.done.acquire(timeout=wait):
            # Left out if its transaction has not inserted it yet.
            pending.cancelled = True
            raise GroupCommitTimeout(f"sqlite {self.path}: not committed within {wait:.3f}s")
        if pending.error is not None:
            raise GroupCommitError(f"sqlite {self.path}: {pending.error}")

    def insert_batch(self, rows: Sequence[Row], also: Sequence[tuple[str, Sequence[Any]]] = (), timeout: float | None = None) -> None:
        """Store ``rows`` and run the statements of ``also`` in one transaction; return once
        it is committed, or raise ``GroupCommitError`` (then nothing of it was stored).

        For a caller that batches rows itself (the store's journal importer): it waits
        for the commit turn like any request, at most ``timeout`` seconds.
        """
        wait = DEFAULT_TIMEOUT if timeout is None else max(0.0, timeout)
        if not self._commit_lock.acquire(timeout=wait):
            raise GroupCommitTimeout(f"sqlite {self.path}: the commit turn was not free within {wait:.3f}s")
        try:
            error = self._until_committed(wait, lambda connection: self._run_transaction(connection, rows, also))
        finally:
            self._commit_lock.release()
        queue = self._queue if self._queue_pid == os.getpid() else None
        if queue is not None:
            self._serve(queue)
        if error is not None:
            raise GroupCommitError(f"sqlite {self.path}: {describe(error)}") from error

    @property
    def queued(self) -> int:
        """Rows waiting for a commit in this process (for tests and diagnostics)."""
        queue = self._queue if self._queue_pid == os.getpid() else None
        return 0 if queue is None else queue.qsize()

    # -- lifecycle -------------------------------------------------------------

    def _new_queue(self) -> SimpleQueue[_Pending]:
        with self._lifecycle:
            pid = os.getpid()
            if self._queue_pid != pid or self._queue is None:
                # One inherited through fork belongs to the parent's threads.
                self._queue, self._queue_pid = SimpleQueue(), pid
            return self._queue

    def close(self) -> None:
        """Commit what is queued, stop the checkpointer and close this process's connection."""
        pid = os.getpid()
        with self._lifecycle:
            if self._checkpointer_pid == pid and self._checkpointer is not None and self._checkpoint_wanted is not None:
                checkpointer, wanted = self._checkpointer, self._checkpoint_wanted
                self._checkpointer = self._checkpoint_wanted = self._checkpointer_pid = None
                # Woken with no event of its own any more, the thread ends.
                wanted.set()
                checkpointer.join(CLOSE_TIMEOUT)
            self._checkpointer = self._checkpoint_wanted = self._checkpointer_pid = None
        queue = self._queue if self._queue_pid == pid else None
        with self._commit_lock:
            if queue is not None:
                while True:
                    batch = self._take(queue)
                    if not batch:
                        break
                    self._commit_and_wake(batch)
            connection, self._connection = self._connection, None
            # One inherited through fork is the parent's: leave its file alone.
            if connection is not None and self._connection_pid == pid:
                connection.close()

    # -- committing ------------------------------------------------------------------

    def _serve(self, queue: SimpleQueue[_Pending]) -> None:
        """While rows are queued and nobody holds the turn: take it, commit a batch, give it up.

        Called by every thread after it gives the turn up and by every thread that
        queued a row: a row is queued either before the holder looks again (and
        the holder takes it) or while nobody holds the turn (and its own thread does).
        """
        while not queue.empty() and self._commit_lock.acquire(blocking=False):
            try:
                batch = self._take(queue)
                if batch:
                    self._commit_and_wake(batch)
            finally:
                self._commit_lock.release()

    def _take(self, queue: SimpleQueue[_Pending]) -> list[_Pending]:
        batch: list[_Pending] = []
        while len(batch) < self.max_batch:
            try:
                pending = queue.get_nowait()
            except Empty:
                break
            if not pending.cancelled:
                batch.append(pending)
        return batch

    def _commit_and_wake(self, batch: list[_Pending]) -> None:
        """Under the commit lock: one transaction for ``batch``, then wake each row's request."""
        # Waiting for another process's lock is worth it only while someone
        # still waits for the answer.
        patience = max(pending.deadline for pending in batch) - time.monotonic()
        errors = self._commit_batch(batch, patience)
        for pending, error in zip(batch, errors):
            if error is not None:
                pending.error = describe(error)
            pending.done.release()

    def _commit_batch(self, batch: list[_Pending], patience: float) -> list[Exception | None]:
        """Commit the rows of ``batch`` in one transaction; the error of each (``None``: stored)."""
        error = self._commit_rows(batch, patience)
        if error is None:
            return [None] * len(batch)
        if len(batch) > 1 and isinstance(error, ROW_ERRORS):
            # One row's fault (a constraint): the others must not fail with it.
            logger.warning("sqlite %s: a batch of %d rows failed (%s); retrying them one by one", self.path, len(batch), error)
            return [self._commit_rows([pending], patience) for pending in batch]
        return [error] * len(batch)

    def _commit_lone_row(self, row: Row, patience: float) -> Exception | None:
        """The caller's own row, in autocommit: one statement, one implicit transaction."""
        return self._until_committed(patience, lambda connection: connection.execute(self.insert_sql, row))

    def _commit_rows(self, batch: list[_Pending], patience: float) -> Exception | None:
        """One transaction with the rows of ``batch``; the failure, or ``None`` when committed."""
        return self._until_committed(patience, lambda connection: self._insert_rows(connection, batch))

    def _until_committed(self, patience: float, commit: Callable[[sqlite3.Connection], object]) -> Exception | None:
        """Run ``commit`` on this process's connection, again while another connection
        holds the write lock, for at most ``patience`` seconds; the failure, or ``None``."""
        retries: Backoff | None = None  # made at the first refusal: most commits get through at once
        while True:
            try:
                commit(self._connection_here(patience))
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    self._drop_broken_connection()
                    return exc
                # Another process commits (or checkpoints): nothing of ours was written.
                if retries is None:
                    retries = _lock_retries(patience)
                if not retries.wait():
                    return GroupCommitTimeout(f"database is locked: another connection held the write lock for {patience:.3f}s")
                continue
            except Exception as exc:  # sqlite3.Error, OSError: the caller is told
                self._drop_broken_connection()
                return exc
            self._committed()
            return None

    def _insert_rows(self, connection: sqlite3.Connection, batch: list[_Pending]) -> None:
        # Rows whose request gave up while the lock was awaited are left
        # out: their request was told they are not stored (and spools them).
        self._run_transaction(connection, [pending.row for pending in batch if not pending.cancelled])

    def _run_transaction(self, connection: sqlite3.Connection, rows: Sequence[Row], also: Sequence[tuple[str, Sequence[Any]]] = ()) -> None:
        # IMMEDIATE takes the write lock up front: a busy database (another process
        # committing) fails here, before any row is written, and is tried again.
        connection.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                connection.executemany(self.insert_sql, rows)
            for statement, parameters in also:
                connection.execute(statement, parameters)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                try:
                    connection.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the failure that brought us here is the one to report
            raise

    # -- checkpoints (a thread of their own) ---------------------------------------

    def _committed(self) -> None:
        """Count a commit (under the commit lock); every CHECKPOINT_EVERY, wake the checkpointer."""
        self._commits_since_checkpoint += 1
        if self._commits_since_checkpoint < CHECKPOINT_EVERY:
            return
        self._commits_since_checkpoint = 0
        wanted = self._checkpoint_wanted if self._checkpointer_pid == os.getpid() else None
        if wanted is None:
            wanted = self._start_checkpointer()
        wanted.set()

    def _start_checkpointer(self) -> threading.Event:
        with self._lifecycle:
            pid = os.getpid()
            if self._checkpointer_pid != pid or self._checkpoint_wanted is None:
                wanted = threading.Event()
                thread = threading.Thread(
                    target=self._checkpoint_loop, args=(wanted,), name=f"pixel-wsgi checkpoint {self.path}", daemon=True
                )
                thread.start()
                self._checkpoint_wanted, self._checkpointer, self._checkpointer_pid = wanted, thread, pid
            return self._checkpoint_wanted

    def _checkpoint_loop(self, wanted: threading.Event) -> None:
        while True:
            wanted.wait()
            wanted.clear()
            if self._checkpoint_wanted is not wanted:  # close() stopped this one
                return
            # A connection per checkpoint (a thousand commits apart): it always reaches
            # the file now at ``path``, even after the store was moved. Never one that
            # creates it: a store just deleted is set up by the next commit, in WAL mode
            # and private, not left here empty and readable by all.
            try:
                connection = sqlite3.connect(database_uri(self.path, "rw"), uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
                try:
                    self._checkpoint(connection)
                finally:
                    connection.close()
            except sqlite3.Error as exc:
                logger.debug("sqlite %s: checkpoint failed (%s); trying again later", self.path, exc)

    def _checkpoint(self, connection: sqlite3.Connection) -> None:
        """Copy the WAL into the database, then restart the WAL from its beginning.

        PASSIVE copies what it can without holding anyone up. But SQLite restarts the
        WAL only once a checkpoint has caught up with every frame, and with two worker
        processes appending all the time a PASSIVE checkpoint never does: the WAL grew
        by a page per commit, 200 MB per 40,000 events, without end. So the few frames
        written meanwhile are copied by RESTART, which takes the write lock (the other
        processes' commits are refused and try again) while this process's requests
        queue their rows behind its commit turn. RESTART is tried like a commit, again
        and again between the other processes' commits: SQLite's busy handler tries a
        few times in 100 ms and lost every time to writers committing back to back (the
        WAL then grew past 40 MB).
        """
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        connection.execute("PRAGMA busy_timeout = 0")
        retries = _lock_retries(CHECKPOINT_LOCK_TIMEOUT)
        with self._commit_lock:
            while connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0] and retries.wait():
                pass  # busy: a writer or a reader of an older snapshot was in the way
        # Rows queued while the turn was held are committed now, not at the next insert.
        queue = self._queue if self._queue_pid == os.getpid() else None
        if queue is not None:
            self._serve(queue)

    def _drop_broken_connection(self) -> None:
        if self._connection is not None and not self._usable(self._connection):
            self._connection.close()
            self._connection = None  # opened again for the next transaction

    def _connection_here(self, patience: float) -> sqlite3.Connection:
        pid = os.getpid()
        connection = self._connection
        if connection is not None and self._connection_pid == pid:
            now = time.monotonic()
            if now < self._file_checked_at + FILE_CHECK_INTERVAL:
                return connection
            self._file_checked_at = now
            if self._same_file():
                return connection
            # Renamed away or deleted (an operator archiving the store): a connection
            # kept open would go on writing where nobody reads. Start a new file.
            logger.warning("sqlite %s: the file was moved or deleted; opening a new one", self.path)
            connection.close()
        # A connection inherited through fork must never be used in the child. A new
        # file is set up within the waiting requests' time, not the busy timeout.
        build_new_database(self.path, self.schema, wait=patience)
        self._connection = connection = self._connect(self.path, self.schema)
        self._connection_pid = pid
        self._file_identity = self._identity()
        self._file_checked_at = time.monotonic()
        # Checkpoints are the checkpointer thread's job, never a commit's.
        connection.execute("PRAGMA wal_autocheckpoint = 0")
        # A locked database answers at once; ``_until_committed`` waits, briefly.
        connection.execute("PRAGMA busy_timeout = 0")
        return self._connection

    def _identity(self) -> tuple[int, int] | None:
        try:
            status = os.stat(self.path)
        except OSError:
            return None
        return (status.st_dev, status.st_ino)

    def _same_file(self) -> bool:
        identity = self._identity()
        return identity is not None and identity == self._file_identity

    @staticmethod
    def _usable(connection: sqlite3.Connection) -> bool:
        try:
            connection.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def __repr__(self) -> str:
        return f"<GroupCommitter {self.path}>"


def _lock_retries(seconds: float) -> Backoff:
    """The waits between tries of the write lock another connection holds, for ``seconds``
    in all: none for RETRY_AT_ONCE_FOR, then pauses from FIRST_PAUSE up to LONGEST_PAUSE."""
    return Backoff(seconds, at_once_for=RETRY_AT_ONCE_FOR, first_pause=FIRST_PAUSE, longest_pause=LONGEST_PAUSE)


def _is_busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds the lock (worth retrying)."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return bool(code & 0xFF == SQLITE_BUSY)
    return "database is locked" in str(error)
