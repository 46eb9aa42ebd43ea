"""Connections that belong to one thread of one process: SQLite databases, HTTP sessions.

gunicorn may build the app before it forks (``--preload``) and gthread workers share
it between threads, so nothing here is opened in a constructor: each thread opens its
own connection on first use, a forked child opens new ones instead of using its
parent's, and ``close()`` closes what this process opened, in every thread.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

# Milliseconds a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_MS = 5000


class PerThread(Generic[T]):
    def __init__(self, open_resource: Callable[[], T], close_resource: Callable[[T], object]) -> None:
        self._open = open_resource
        self._close = close_resource
        self._local = threading.local()
        self._opened: list[tuple[int, T]] = []
        # Taken only when a thread opens its resource and at close: never per request.
        self._lock = threading.Lock()

    def get(self) -> T:
        local = self._local
        pid = os.getpid()
        resource: T | None = getattr(local, "resource", None)
        if resource is None or local.pid != pid:
            resource = self._open()
            local.resource, local.pid = resource, pid
            with self._lock:
                self._opened.append((pid, resource))
        return resource

    def __len__(self) -> int:
        """How many are open, in every thread (and inherited through fork)."""
        return len(self._opened)

    def close(self) -> None:
        pid = os.getpid()
        with self._lock:
            opened, self._opened = self._opened, []
        for owner, resource in opened:
            # One inherited through fork is the parent's: leave its sockets and files alone.
            if owner == pid:
                self._close(resource)
        self._local = threading.local()


def open_wal_database(path: str, schema: str) -> sqlite3.Connection:
    """A connection in autocommit, WAL mode, with a busy timeout, and ``schema`` applied.

    WAL lets readers run beside one writer and the busy timeout makes writers from
    several worker processes wait for each other instead of failing.
    """
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    try:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a crash of any process; only a power cut can take
        # the last transactions back, and FULL would cost an fsync per event.
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.executescript(schema)
    except BaseException:
        connection.close()
        raise
    return connection
