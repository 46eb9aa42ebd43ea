"""A lock that worker processes take around their SQLite commits to one file.

SQLite lets one writer at a time into a database and makes the others wait in its
busy handler, which sleeps 1, 2, 5, 10 ms and more between tries: two gunicorn
workers committing a few thousand events a second to the same store collide often,
and each collision cost the loser a millisecond of sleep for a commit that takes
tens of microseconds. With this lock the workers queue for the commit themselves:
``flock`` on a file beside the database, tried without blocking and then again after
pauses that start at 50 µs, so a worker gets its turn a few microseconds after the
other one's commit ends, and never waits past its deadline (a request's budget).

The lock is advisory and local, like SQLite's own locks on a local file system:
every process of pixel-wsgi writing the file takes it; anything else writing the
database (nothing does, in this project) is still handled by SQLite's busy handler.
One descriptor per process, opened on first use (after gunicorn's fork) and closed
with ``close()``; the kernel releases the lock of a process that dies.
"""

from __future__ import annotations

import fcntl
import os
import time

from .resources import PRIVATE_FILE_MODE

# The first pause after a failed try, in seconds; each next one doubles, up to the last.
FIRST_PAUSE = 0.00005
LONGEST_PAUSE = 0.002


class CommitLock:
    def __init__(self, path: str) -> None:
        #: the lock file: the database's path and ``-lock``
        self.path = path + "-lock"
        self._fd: int | None = None
        self._pid: int | None = None

    def acquire(self, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds; ``False`` when another process kept it.

        Only one thread of a process calls this at a time (the group commit's turn).
        """
        fd = self._descriptor()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        deadline = time.monotonic() + timeout
        pause = FIRST_PAUSE
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, LONGEST_PAUSE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                continue

    def release(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        # One inherited through fork shares its lock with the parent: leave it alone.
        if fd is not None and self._pid == os.getpid():
            os.close(fd)

    def _descriptor(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
            self._pid = pid
        return self._fd
