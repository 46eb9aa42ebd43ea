"""Connections that belong to one thread of one process: SQLite databases, HTTP sessions.

gunicorn may build the app before it forks (``--preload``) and gthread workers share
it between threads, so nothing here is opened in a constructor: each thread opens its
own connection on first use, a forked child opens new ones instead of using its
parent's, and ``close()`` closes what this process opened, in every thread.

Servers that start a thread per request (``pixel-wsgi serve``, wsgiref's threading
mix-in) make every request a new thread: a connection must therefore die with the
thread that opened it, or each request leaks a file descriptor and a page cache.

Files that hold events (the store, the spool, JSON-lines files) are created readable
by their owner only: they contain email addresses, user ids and IP addresses.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

# Milliseconds a writer waits for another process's transaction before giving up;
# on the request path the dispatch deadline shortens it (``wait_for_locks_at_most``).
BUSY_TIMEOUT_MS = 5000
# New data files: owner read and write only. Existing files keep their mode.
PRIVATE_FILE_MODE = 0o600
_CREATED_NAMES = re.compile(r"CREATE\s+(?:TABLE|INDEX|UNIQUE\s+INDEX|VIEW|TRIGGER)\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE)


class _Holder(Generic[T]):
    """What a thread's ``threading.local`` keeps: when the thread ends, the holder is
    dropped with the thread's locals, and its finalizer closes the resource."""

    __slots__ = ("resource", "pid", "__weakref__")

    def __init__(self, resource: T, pid: int) -> None:
        self.resource = resource
        self.pid = pid


class PerThread(Generic[T]):
    def __init__(self, open_resource: Callable[[], T], close_resource: Callable[[T], object]) -> None:
        self._open = open_resource
        self._close = close_resource
        self._local = threading.local()
        # Finalizers of the resources open now, by holder id: a finished thread's entry
        # removes itself, so this never grows with the number of threads served.
        self._open_now: dict[int, weakref.finalize[Any, Any]] = {}
        # Taken only when a thread opens or drops its resource and at close: never per request.
        self._lock = threading.Lock()

    def get(self) -> T:
        holder: _Holder[T] | None = getattr(self._local, "holder", None)
        pid = os.getpid()
        if holder is None or holder.pid != pid:
            holder = _Holder(self._open(), pid)
            finalizer = weakref.finalize(holder, self._release, id(holder), holder.resource, pid)
            # At interpreter exit the process is going away: closing is close()'s job.
            finalizer.atexit = False
            with self._lock:
                self._open_now[id(holder)] = finalizer
            self._local.holder = holder
        return holder.resource

    def _release(self, key: int, resource: T, owner: int) -> None:
        with self._lock:
            self._open_now.pop(key, None)
        # One inherited through fork is the parent's: leave its sockets and files alone.
        if owner == os.getpid():
            try:
                self._close(resource)
            except Exception:  # pragma: no cover - closing is best effort, from any thread
                pass

    def __len__(self) -> int:
        """How many are open, in every live thread (and inherited through fork)."""
        return len(self._open_now)

    def close(self) -> None:
        with self._lock:
            finalizers = list(self._open_now.values())
        for finalizer in finalizers:
            finalizer()  # runs at most once, whichever comes first: this or the thread's end
        self._local = threading.local()


class Backoff:
    """The waits between tries of something another process holds, for ``seconds`` in all:
    none for ``at_once_for`` seconds, then pauses from ``first_pause`` doubling up to
    ``longest_pause``; the last one ends at the deadline."""

    __slots__ = ("deadline", "at_once_until", "pause", "longest_pause")

    def __init__(self, seconds: float, *, first_pause: float, longest_pause: float, at_once_for: float = 0.0) -> None:
        now = time.monotonic()
        self.deadline = now + seconds
        self.at_once_until = now + at_once_for
        self.pause = first_pause
        self.longest_pause = longest_pause

    def wait(self) -> bool:
        """Wait before the next try; ``False`` (at once) when the time is up."""
        now = time.monotonic()
        if now >= self.deadline:
            return False
        if now >= self.at_once_until:
            time.sleep(min(self.pause, self.deadline - now))
            self.pause = min(self.pause * 2, self.longest_pause)
        return True


def database_uri(path: str, mode: str) -> str:
    """A ``file:`` URI for ``sqlite3.connect(..., uri=True)`` that never creates the file:
    ``mode`` is ``"ro"`` or ``"rw"``. The path is made absolute and escaped (a ``?`` or
    ``#`` in a folder name would otherwise end it)."""
    return Path(os.path.abspath(path)).as_uri() + f"?mode={mode}"


def create_private(path: str) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist; an existing file is left alone.

    SQLite gives its ``-wal`` and ``-shm`` files the mode of the database file, so a
    database created here keeps all three private, whatever the umask.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def open_wal_database(path: str, schema: str, *, incremental_vacuum: bool = False, setup_wait: float | None = None) -> sqlite3.Connection:
    """A connection in autocommit, WAL mode, with a busy timeout, and ``schema`` applied.

    WAL lets readers run beside one writer and the busy timeout makes writers from
    several worker processes wait for each other instead of failing. A missing or empty
    file is first set up by ``build_new_database`` (0600, WAL mode, ``schema``; with
    ``incremental_vacuum``, freed pages can be given back), waiting at most
    ``setup_wait`` seconds for another process setting it up.
    """
    build_new_database(path, schema, incremental_vacuum=incremental_vacuum, wait=setup_wait)
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    try:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # A file made by some other program may still be in rollback-journal mode.
        _use_wal(connection)
        # NORMAL in WAL mode survives a crash of any process; only a power cut can take
        # the last transactions back, and FULL would cost an fsync per event.
        connection.execute("PRAGMA synchronous = NORMAL")
        _apply_schema(connection, schema)
    except BaseException:
        connection.close()
        raise
    return connection


class DatabaseSetupTimeout(sqlite3.OperationalError):
    """Another process kept the set-up lock of a new database for longer than the caller could wait.

    Not "database is locked": that one is retried by the store's commit loop, and
    this wait has already used the caller's time.
    """


def build_new_database(path: str, schema: str, *, incremental_vacuum: bool = False, wait: float | None = None) -> None:
    """Give a missing or empty database file its tables, in WAL mode, one process at a time.

    Several processes and threads opening a new file at once all found it empty and all
    set it up: SQLite then answered one of them "database is locked" without waiting, or
    "disk I/O error" (one deleted a write-ahead log that another had just deleted),
    and that worker's first events were answered 503. So the set-up of a new file runs
    under an ``flock`` on a lock file beside it (``<path>.setup-lock``): whoever holds it
    creates the file (0600: SQLite gives the ``-wal`` and ``-shm`` files the same mode),
    sets incremental vacuum (only possible before the first table), switches to WAL,
    creates the tables, checkpoints them into the file and closes. The others wait (at
    most ``wait`` seconds; by default the busy timeout), find a file that is not empty,
    and open it as usual. A file that already has content never takes the lock.
    """
    if path == ":memory:" or path.startswith("file:") or _has_content(path):
        return
    with _setup_lock(path, BUSY_TIMEOUT_MS / 1000 if wait is None else max(0.0, wait)):
        create_private(path)
        if _has_content(path):  # set up by another process while this one waited
            return
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            if incremental_vacuum:
                connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
            _use_wal(connection)
            connection.executescript(schema)
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            connection.close()


def _has_content(path: str) -> bool:
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


# Beside the database: ``<path>.setup-lock``, kept for the next set-up (a new file after
# the old one was archived). Not the database file itself: a descriptor of it closed by
# this process would drop the POSIX locks SQLite holds on it in other threads. Not its
# folder: other tools (a backup run under ``flock``) may lock that.
SETUP_LOCK_SUFFIX = ".setup-lock"


@contextmanager
def _setup_lock(path: str, wait: float) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``'s set-up lock file, waited for at most ``wait`` seconds."""
    lock_path = path + SETUP_LOCK_SUFFIX
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
    try:
        # A set-up takes milliseconds; a longer hold is someone else's business, so the
        # waiters back off rather than spin.
        backoff = Backoff(wait, first_pause=0.001, longest_pause=0.05)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not backoff.wait():
                    raise DatabaseSetupTimeout(f"cannot set up {path}: {lock_path} was held by another process for {wait:.3f}s") from None
        yield
    finally:
        os.close(fd)  # drops the lock


def _apply_schema(connection: sqlite3.Connection, schema: str) -> None:
    """Create what ``schema`` names and the file lacks (a newer version may add a table).

    Running the script takes the write lock even when it creates nothing: a thread
    opening its connection while another process writes would wait the whole busy
    timeout. Reading the catalogue needs no lock in WAL mode.
    """
    wanted = set(_CREATED_NAMES.findall(schema))
    existing = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    if not wanted or not wanted <= existing:
        connection.executescript(schema)


def _use_wal(connection: sqlite3.Connection) -> None:
    """Switch a database to WAL mode, waiting for other processes doing the same.

    Worker processes opening a file still in rollback-journal mode at once (one made by
    another program) all try to switch it; the switch needs an exclusive lock, and
    SQLite answers "database is locked" at once rather than calling the busy handler
    (waiting could deadlock two such switches). So it is tried again, with short
    sleeps, up to the busy timeout; a file already in WAL mode (the other process won)
    answers at once.
    """
    backoff = Backoff(BUSY_TIMEOUT_MS / 1000, first_pause=0.002, longest_pause=0.05)
    while True:
        try:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or not backoff.wait():
                raise
            continue
        if str(mode).lower() not in ("wal", "memory"):  # an in-memory database has no journal file
            raise sqlite3.OperationalError(f"cannot use WAL mode (journal_mode is {mode})")
        return


def wait_for_locks_at_most(connection: sqlite3.Connection, seconds: float | None) -> None:
    """Make the next statements wait at most ``seconds`` for another process's lock.

    The dispatch budget is a wall clock: a writer in another process holding the
    database must not hold a pixel request for the full busy timeout. ``None``
    restores the normal timeout (replay and the command line may wait).
    """
    milliseconds = BUSY_TIMEOUT_MS if seconds is None else max(1, min(BUSY_TIMEOUT_MS, int(seconds * 1000)))
    connection.execute(f"PRAGMA busy_timeout = {milliseconds}")
