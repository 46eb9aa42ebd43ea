"""The store's journal: an event is kept in a file before the answer, committed to SQLite in batches.

A SQLite commit per event costs a pixel request more than everything else it does
(locks, write-ahead-log frames, and, with several worker processes writing the same
file, a page cache that the other processes' commits throw away each time). Each
process therefore appends every event to a journal file of its own and answers;
the rows reach the store a few milliseconds later, many per transaction.

The rules:

- **An event is kept before the answer**: ``add`` returns once the event's record
  is in the journal file. The file is memory-mapped, so the record is in the
  operating system's page cache the moment it is copied: it survives the process
  being killed, exactly as a SQLite commit with ``synchronous = NORMAL`` does (neither
  survives a power cut). A journal that cannot take the event (it cannot be created,
  or too many events wait for a store that keeps failing) raises
  ``JournalUnavailable``; the store then commits the event itself, before answering.
- **Events reach the store within milliseconds**: the request that brings the
  ``BATCH_ROWS``-th waiting event, or that finds the oldest one ``REQUEST_COMMIT_AGE``
  old, commits the waiting events itself (no hand-over to another thread, which costs
  as much as the commit); otherwise a thread of the process does it: at once after a
  quiet spell, ``MAX_DELAY`` after the first one arrived while events keep coming.
  Readers of the store see an event that late.
- **What was imported is recorded in the same transaction**: the table
  ``journal_progress`` keeps, per journal file, how far it has been committed. A
  process that dies (``kill -9``, out of memory) leaves its journal; another process
  of the store, or the next one to start, finds it (its ``flock`` is free: the owner
  holds it for as long as it lives), commits the events past that point and deletes
  the file. Nothing is stored twice unless the store file itself was replaced in
  between (at-least-once, never lost).
- **Files are private and bounded**: the journals live in ``<store>.journals/`` (0700),
  one file of ``SEGMENT_BYTES`` per process at a time (0600, its space reserved up
  front: a full disk fails the creation of a file, never a write into it). A full
  file is followed by a new one and deleted once all its events are in the store.
- **A graceful exit leaves nothing behind**: ``close()`` (also run when the process
  exits normally: gunicorn's worker restarts) commits the waiting events and deletes
  the process's journal.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import mmap
import os
import secrets
import sqlite3
import struct
import threading
import time
import zlib
from typing import Any, Sequence

import orjson

from .group_commit import GroupCommitError, GroupCommitter
from .resources import database_uri

logger = logging.getLogger(__name__)

# Bytes of one journal file (reserved when it is created): about 3,000 events of a
# typical page view; a process keeps one open at a time.
SEGMENT_BYTES = 4 << 20
# A record: its length and CRC-32, then the row as JSON. A zero length ends the file's
# records (a new file reads as zeros).
HEADER = struct.Struct("<II")
# Waiting events that make the request bringing the last of them commit them all; and
# how old the oldest waiting event must be for any request to commit them. A busy
# worker's request threads keep the GIL, so its journal thread can wait tens of
# milliseconds for its turn: under load, requests commit, and readers see each event
# within about REQUEST_COMMIT_AGE.
BATCH_ROWS = 32
REQUEST_COMMIT_AGE = 0.01
# Seconds the first waiting event waits for others before the journal's thread commits
# it, when the last commit was less than BUSY_WITHIN seconds before and took more than
# one event (events are arriving fast); otherwise (a quiet spell, a trickle of single
# events) the thread commits at once. Longer than
# REQUEST_COMMIT_AGE: while requests keep coming they commit (a request thread holds
# the GIL already; the journal's thread must wait for it, once per SQLite call), and
# the thread commits what the last requests of a burst leave (measured under gunicorn
# gthread: 0.76 of bare werkzeug's rate with 5 ms here, 0.80 with 20 ms).
MAX_DELAY = 0.02
BUSY_WITHIN = 0.05
# Rows per transaction at most (the store's write lock is held that long).
MAX_IMPORT = 500
# Journal files with events not yet in the store, at most: past this (the store has
# failed for thousands of events) events are committed directly, or fail and are spooled.
MAX_WAITING_SEGMENTS = 4
# Waiting events also kept in memory, at most: the rest (while the store is locked or
# failing) are read back from their file when they are committed, so that a worker's
# memory does not grow with an outage of the store.
MAX_ROWS_IN_MEMORY = 4096
# How long a request that commits a batch waits for another process's write lock;
# the journal's thread tries again later, with the events safe in the journal.
REQUEST_IMPORT_PATIENCE = 0.05
# How long the journal's thread waits for the store, per try.
THREAD_IMPORT_PATIENCE = 5.0
# Pauses between failed tries of the journal's thread.
RETRY_FIRST_PAUSE = 0.05
RETRY_LONGEST_PAUSE = 2.0
# Seconds between two looks for journals left by processes that ended.
ORPHAN_SCAN_INTERVAL = 5.0
# Seconds between two checks that this process's files are still there: one deleted by
# hand (or with its folder) is made again, so that its waiting events survive a kill.
FILE_CHECK_INTERVAL = 0.25
# A file being created is locked at once; one under its temporary name for this long
# was left by a process that died in between, and a scan removes it.
NEW_FILE_GRACE = 60.0
# How long ``close()`` waits for the store.
CLOSE_TIMEOUT = 10.0
SUFFIX = ".journal"
NEW_SUFFIX = ".new"

PROGRESS_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_progress (
    journal TEXT PRIMARY KEY,
    imported_to INTEGER NOT NULL
);
"""
_RECORD_PROGRESS = "INSERT OR REPLACE INTO journal_progress (journal, imported_to) VALUES (?, ?)"
_FORGET_JOURNAL = "DELETE FROM journal_progress WHERE journal = ?"

Row = Sequence[Any]


class JournalUnavailable(Exception):
    """The journal cannot keep this event: the caller must store it some other way."""


def journal_folder(store_path: str) -> str:
    """The folder of the journals of the store at ``store_path``."""
    # Not "-journal": that is the name of SQLite's own rollback journal beside the file.
    return os.path.abspath(store_path) + ".journals"


class _Segment:
    """One journal file of this process, mapped in memory and locked for as long as it lives."""

    def __init__(self, folder: str) -> None:
        self.name = f"{os.getpid()}-{secrets.token_hex(6)}{SUFFIX}"
        self.folder = folder
        self.path = os.path.join(folder, self.name)
        self.fd, self.map = _create_locked_file(folder, self.name)
        # Offset after the last record written, and after the last one in the store.
        self.end = 0
        self.imported = 0
        # No more records go here (a newer file took over).
        self.retired = False

    def is_deleted(self) -> bool:
        """Whether the file was deleted or moved away (an operator cleaning up, a folder removed)."""
        try:
            return not os.path.samestat(os.fstat(self.fd), os.stat(self.path))
        except OSError:
            return True

    def make_again(self) -> None:
        """Write the records into a new file under the same name and go on with it: the
        events waiting in a deleted file would otherwise die with this process. Same
        name, same offsets, so the progress recorded in the store still applies."""
        fd, new_map = _create_locked_file(self.folder, self.name)
        new_map[: self.end] = self.map[: self.end]
        self.close()
        self.fd, self.map = fd, new_map

    def append(self, record: bytes) -> int | None:
        """Write ``record``; its end offset, or ``None`` when the file has no room (under the journal's lock)."""
        start = self.end
        end = start + HEADER.size + len(record)
        if end > SEGMENT_BYTES:
            return None
        # The record first, its header last: a process killed in between leaves a zero
        # length where the record would start, which ends the file's records.
        self.map[start + HEADER.size : end] = record
        HEADER.pack_into(self.map, start, len(record), zlib.crc32(record))
        self.end = end
        return end

    def row_at(self, start: int) -> Row:
        """The row of the record written at ``start`` (one this process wrote: it is whole)."""
        length = HEADER.unpack_from(self.map, start)[0]
        return tuple(orjson.loads(self.map[start + HEADER.size : start + HEADER.size + length]))

    @property
    def finished(self) -> bool:
        return self.retired and self.imported == self.end

    def delete(self) -> None:
        """Unlink the file, then let it go (the lock goes with the descriptor)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # All its events are in the store: another process's scan removes it later.
            logger.warning("journal %s: cannot delete it (%s); its events are in the store", self.path, exc)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self.map.close()
            os.close(self.fd)
            self.fd = -1


def _create_locked_file(folder: str, name: str) -> tuple[int, mmap.mmap]:
    """A new journal file ``name`` in ``folder`` (made if missing, 0700): locked, its space
    reserved, mapped in memory."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:
        raise JournalUnavailable("this system cannot reserve a journal's space (no posix_fallocate)")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    # Made under a name no scan takes (a scan removes such a file only when it is old
    # and unlocked), locked, then renamed: a scan for the journals of ended processes
    # can never take a file whose owner is alive.
    new_path = os.path.join(folder, "." + name + NEW_SUFFIX)
    path = os.path.join(folder, name)
    fd = os.open(new_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Reserved now: writing into a memory map of a file the disk has no room for
        # kills the process (SIGBUS).
        fallocate(fd, 0, SEGMENT_BYTES)
        mapped = mmap.mmap(fd, SEGMENT_BYTES)
        try:
            os.rename(new_path, path)
        except BaseException:
            mapped.close()
            raise
    except BaseException:
        os.close(fd)
        try:
            os.unlink(new_path)
        except OSError:
            pass
        raise
    return fd, mapped


def _older_than(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > seconds
    except OSError:
        return False


def read_records(path: str, start: int = 0) -> list[tuple[int, Row]]:
    """The records of the journal file at ``path`` from offset ``start``: (end offset, row) each.

    Reading stops at a zero length (the end) or at a record that is cut short or does
    not match its checksum (a process killed while writing it: that event was never
    answered).
    """
    with open(path, "rb") as file:
        data = file.read()
    records: list[tuple[int, Row]] = []
    offset = start
    while offset + HEADER.size <= len(data):
        length, checksum = HEADER.unpack_from(data, offset)
        if length == 0:
            break
        end = offset + HEADER.size + length
        record = data[offset + HEADER.size : end]
        if end > len(data) or zlib.crc32(record) != checksum:
            logger.warning("journal %s: a torn record at offset %d ends its events (a write cut off by the process's end)", path, offset)
            break
        records.append((end, tuple(orjson.loads(record))))
        offset = end
    return records


class _ProcessJournal:
    """The journal state of one process: its file, the events waiting for the store, its thread."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.segment: _Segment | None = None
        # Files written before ``segment`` whose events are not all in the store yet.
        self.older: list[_Segment] = []
        # Events in the journal, not yet in the store, oldest first: (file, start and end
        # offsets of the record, the row or ``None`` if it is only in the file).
        self.waiting: list[tuple[_Segment, int, int, Row | None]] = []
        # Taken to append (one memory copy) and to take or give back waiting events.
        self.lock = threading.Lock()
        # Held by whoever commits waiting events: one batch at a time, in order.
        self.importing = threading.Lock()
        # Set when the first event starts waiting, or when the thread should look again.
        self.wanted = threading.Event()
        self.thread: threading.Thread | None = None
        self.closing = False
        # The failure being retried, logged once until a commit succeeds again.
        self.failure: str | None = None
        # When the oldest waiting event arrived, when the last commit ended (monotonic
        # clock), and how many events it took.
        self.oldest_at = 0.0
        self.last_commit_at = 0.0
        self.last_batch = 0

    def segments(self) -> list[_Segment]:
        """Every file of this process still open, oldest first."""
        return [*self.older, *([self.segment] if self.segment is not None else [])]


class StoreJournal:
    """Write-behind for the SQLite store at ``committer.path`` (see the module's rules)."""

    def __init__(self, committer: GroupCommitter) -> None:
        self.committer = committer
        self.folder = journal_folder(committer.path)
        self._state: _ProcessJournal | None = None
        self._start_lock = threading.Lock()
        self._atexit_pids: set[int] = set()

    # -- the request path ------------------------------------------------------

    def add(self, row: Row) -> None:
        """Keep ``row`` in this process's journal (raises ``JournalUnavailable`` if it cannot)."""
        state = self._state
        if state is None or state.pid != os.getpid():
            state = self._start()
        try:
            record = orjson.dumps(row)
        except orjson.JSONEncodeError as exc:  # not text SQLite could take either: let the store say so
            raise JournalUnavailable(f"the event cannot be journaled: {exc}") from exc
        with state.lock:
            if state.closing:
                raise JournalUnavailable("the journal is closed")
            segment = state.segment
            end = segment.append(record) if segment is not None else None
            if segment is None or end is None:
                segment = self._new_segment(state)
                end = segment.append(record)
                if end is None:
                    raise JournalUnavailable(f"an event of {len(record)} bytes does not fit a journal file")
            start = end - HEADER.size - len(record)
            waiting = len(state.waiting) + 1
            state.waiting.append((segment, start, end, row if waiting <= MAX_ROWS_IN_MEMORY else None))
            now = time.monotonic()
            if waiting == 1:
                state.oldest_at = now
        if waiting == 1:
            state.wanted.set()
        elif (
            (waiting >= BATCH_ROWS or now - state.oldest_at >= REQUEST_COMMIT_AGE)
            # While the store fails, only the journal's thread tries it: requests go on at once.
            and state.failure is None
            and state.importing.acquire(blocking=False)
        ):
            try:
                self._import(state, REQUEST_IMPORT_PATIENCE)
            except Exception:  # the event is kept: its answer must not depend on the others' commit
                logger.exception("sqlite %s: committing the journal's events failed; its thread tries again", self.committer.path)
            finally:
                state.importing.release()

    def _new_segment(self, state: _ProcessJournal) -> _Segment:
        """A new journal file for this process (under its lock), the full one kept until imported."""
        if len(state.older) >= MAX_WAITING_SEGMENTS:
            raise JournalUnavailable(f"{len(state.older)} journal files wait for the store ({state.failure or 'it is slow'})")
        try:
            segment = _Segment(self.folder)
        except OSError as exc:
            raise JournalUnavailable(f"cannot create a journal file in {self.folder}: {exc}") from exc
        if state.segment is not None:
            state.segment.retired = True
            state.older.append(state.segment)
        state.segment = segment
        return segment

    # -- committing ------------------------------------------------------------

    def _import(self, state: _ProcessJournal, patience: float) -> bool:
        """Commit up to MAX_IMPORT waiting events (holding ``state.importing``); ``False`` if the store failed."""
        with state.lock:
            batch = state.waiting[:MAX_IMPORT]
            del state.waiting[:MAX_IMPORT]
            state.oldest_at = time.monotonic()  # (for those left: no older than this batch's commit)
        if not batch:
            return True
        progress: dict[_Segment, int] = {}
        for segment, _start, end, _row in batch:
            progress[segment] = end
        try:
            self.committer.insert_batch(
                [row if row is not None else segment.row_at(start) for segment, start, _end, row in batch],
                [(_RECORD_PROGRESS, (segment.name, end)) for segment, end in progress.items()],
                patience,
            )
        except GroupCommitError as exc:
            with state.lock:
                state.waiting[0:0] = batch  # back at the front, in order
            if state.failure is None:
                logger.warning("sqlite %s: %d events wait in the journal: %s; trying again", self.committer.path, len(batch), exc)
            state.failure = str(exc)
            return False
        if state.failure is not None:
            logger.warning("sqlite %s: the store takes events again; the journal's events are in it", self.committer.path)
            state.failure = None
        for segment, end in progress.items():
            segment.imported = end
        state.last_commit_at, state.last_batch = time.monotonic(), len(batch)
        self._delete_finished(state)
        return True

    def _delete_finished(self, state: _ProcessJournal) -> None:
        with state.lock:
            finished = [segment for segment in state.older if segment.finished]
            state.older = [segment for segment in state.older if not segment.finished]
        for segment in finished:
            self._discard(segment)

    def _discard(self, segment: _Segment) -> None:
        """Delete a file whose events are all in the store, then its progress row."""
        # Deleted first, forgotten after: a process killed in between leaves a progress
        # row without a file (harmless), never a file without its row.
        segment.delete()
        self._forget(segment.name)

    def _forget(self, name: str) -> None:
        try:
            self.committer.insert_batch([], [(_FORGET_JOURNAL, (name,))], THREAD_IMPORT_PATIENCE)
        except GroupCommitError as exc:
            logger.debug("sqlite %s: the progress of journal %s stays (%s)", self.committer.path, name, exc)

    def flush(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Commit every event this process has journaled; ``False`` if the store failed first."""
        state = self._state
        if state is None or state.pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        with state.importing:
            while state.waiting:
                if not self._import(state, max(0.0, deadline - time.monotonic())):
                    return False
        return True

    # -- the journal's thread --------------------------------------------------------

    def _start(self) -> _ProcessJournal:
        with self._start_lock:
            pid = os.getpid()
            state = self._state
            if state is not None and state.pid == pid:
                return state
            # One inherited through fork is the parent's: its file, lock and thread stay there.
            state = _ProcessJournal()
            thread = threading.Thread(target=self._run, args=(state,), name=f"pixel-wsgi journal {self.committer.path}", daemon=True)
            state.thread = thread
            self._state = state
            if pid not in self._atexit_pids:
                self._atexit_pids.add(pid)
                atexit.register(self.close)
            thread.start()
            return state

    def _run(self, state: _ProcessJournal) -> None:
        next_scan = next_file_check = 0.0
        pause = RETRY_FIRST_PAUSE
        while not state.closing:
            try:
                now = time.monotonic()
                if now >= next_scan:
                    self.recover_orphans()
                    next_scan = time.monotonic() + ORPHAN_SCAN_INTERVAL
                if now >= next_file_check:
                    self._make_deleted_files_again(state)
                    next_file_check = now + FILE_CHECK_INTERVAL
                if not state.waiting:
                    state.wanted.wait(max(0.0, min(next_scan, next_file_check) - time.monotonic()))
                    state.wanted.clear()
                    continue
                if state.last_batch > 1 and time.monotonic() - state.last_commit_at < BUSY_WITHIN:
                    time.sleep(MAX_DELAY)  # others arriving meanwhile share the commit
                    if state.waiting and time.monotonic() - state.oldest_at < MAX_DELAY:
                        continue  # requests are committing as they come: none is late
                with state.importing:
                    committed = self._import(state, THREAD_IMPORT_PATIENCE)
            except Exception:  # this thread must outlive any one failure: it is what commits
                logger.exception("sqlite %s: the journal's thread failed; it goes on", self.committer.path)
                committed = False
            if committed:
                pause = RETRY_FIRST_PAUSE
            else:
                state.wanted.wait(pause)
                pause = min(pause * 2, RETRY_LONGEST_PAUSE)

    def _make_deleted_files_again(self, state: _ProcessJournal) -> None:
        """Write again, under the same name, each of this process's files that was deleted."""
        with state.importing, state.lock:  # no append, no commit under way
            for segment in state.segments():
                if segment.fd < 0 or not segment.is_deleted():
                    continue
                try:
                    segment.make_again()
                except OSError as exc:
                    logger.error("journal %s was deleted and cannot be made again (%s): its events wait in memory only", segment.path, exc)
                    continue
                logger.warning("journal %s was deleted while in use; made again with its %d bytes of events", segment.path, segment.end)

    def close(self) -> None:
        """Commit what waits, stop the thread and delete this process's journal files."""
        state = self._state
        if state is None or state.pid != os.getpid():
            return
        with state.lock:
            state.closing = True
        state.wanted.set()
        if state.thread is not None and state.thread is not threading.current_thread():
            state.thread.join(CLOSE_TIMEOUT)
        self.flush(CLOSE_TIMEOUT)
        self._make_deleted_files_again(state)
        with state.importing:
            self._close_segments(state)
        self._state = None

    def _close_segments(self, state: _ProcessJournal) -> None:
        segments = state.segments()
        state.older, state.segment = [], None
        for segment in segments:
            if segment.imported == segment.end:
                self._discard(segment)
            else:
                # The store failed: the file stays for the next process to import.
                logger.warning("sqlite %s: journal %s keeps events not yet in the store", self.committer.path, segment.path)
                segment.close()

    # -- journals of processes that ended ------------------------------------------

    def recover_orphans(self) -> int:
        """Commit the events of journals whose process has ended, then delete them; how many events."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return 0
        recovered = 0
        for name in names:
            path = os.path.join(self.folder, name)
            if name.endswith(SUFFIX) and not name.startswith("."):
                recovered += self._recover_if_orphan(path, name)
            elif name.startswith(".") and name.endswith(NEW_SUFFIX) and _older_than(path, NEW_FILE_GRACE):
                # Made by a process that died before it wrote anything in it.
                self._with_orphan(path, lambda stale=path: os.unlink(stale))
        return recovered

    def _recover_if_orphan(self, path: str, name: str) -> int:
        try:
            result = self._with_orphan(path, lambda: self._recover(path, name))
        except OSError as exc:  # not readable, not a file: one bad entry must not stop the others
            logger.warning("sqlite %s: cannot recover the journal %s (%s)", self.committer.path, path, exc)
            return 0
        return result or 0

    @staticmethod
    def _with_orphan(path: str, action: Any) -> Any:
        """Run ``action`` holding the file's lock if its process has ended (the lock is free)."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return None  # its process lives (or another one is recovering it)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except OSError:
                same = False
            if not same:
                return None  # deleted or replaced after we opened it: done by another
            return action()
        finally:
            os.close(fd)

    def _recover(self, path: str, name: str) -> int:
        start = self._imported_to(name)
        if start is None:
            return 0  # the store cannot say now: the next scan tries again
        records = read_records(path, start)
        for first in range(0, len(records), MAX_IMPORT):
            chunk = records[first : first + MAX_IMPORT]
            try:
                self.committer.insert_batch(
                    [row for _end, row in chunk], [(_RECORD_PROGRESS, (name, chunk[-1][0]))], THREAD_IMPORT_PATIENCE
                )
            except GroupCommitError as exc:
                logger.warning("sqlite %s: the journal %s of an ended process waits: %s", self.committer.path, path, exc)
                return first
        try:
            os.unlink(path)
        except OSError as exc:  # its events are in the store, and its progress says so
            logger.warning("sqlite %s: cannot delete the recovered journal %s (%s)", self.committer.path, path, exc)
            return len(records)
        self._forget(name)
        if records:
            logger.warning(
                "sqlite %s: %d events committed from the journal of an ended process (%s)", self.committer.path, len(records), name
            )
        return len(records)

    def _imported_to(self, name: str) -> int | None:
        """How far the journal ``name`` is in the store: 0 if the store has no record of
        it (no file, no table, no row), ``None`` if the store cannot be read now."""
        progress = self._read_progress(name)
        if progress is None:
            # A store whose writer was killed while setting it up keeps a hot rollback
            # journal, which a read-only connection may not roll back ("attempt to write a
            # readonly database"): an empty transaction of the store's own writer repairs
            # it (and finishes the set-up), then the progress can be read.
            try:
                self.committer.insert_batch([], [], THREAD_IMPORT_PATIENCE)
            except GroupCommitError as exc:
                logger.debug("sqlite %s: cannot open the store to recover journals (%s)", self.committer.path, exc)
                return None
            progress = self._read_progress(name)
        return progress

    def _read_progress(self, name: str) -> int | None:
        if not os.path.exists(self.committer.path):
            return 0
        try:
            connection = sqlite3.connect(database_uri(self.committer.path, "ro"), uri=True)
            try:
                tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "journal_progress" not in tables:
                    return 0
                row = connection.execute("SELECT imported_to FROM journal_progress WHERE journal = ?", (name,)).fetchone()
            finally:
                connection.close()
        except sqlite3.Error as exc:
            logger.debug("sqlite %s: cannot read the journals' progress (%s)", self.committer.path, exc)
            return None
        return int(row[0]) if row else 0
