"""One drainer at a time per spool file, across every process on the machine.

Two drainers reading the same rows would both send them. Whoever drains (the
background drainer of any gunicorn worker, or ``pixel-wsgi spool replay``) first takes
an exclusive ``flock`` on a lock file beside the spool, without waiting. The kernel
ties the lock to the open file, so a drainer that is killed, even with SIGKILL, frees
it at once: there is no stale lock to clean up. The holder writes who it is into the
file, so a refused drainer can say who holds it.

``flock`` is advisory and local: every drainer of one spool must run on the machine
that holds the file (a spool on NFS is not supported anyway; SQLite's WAL needs shared
memory).
"""

from __future__ import annotations

import fcntl
import os

LOCK_SUFFIX = ".drain-lock"


class DrainLock:
    """``with DrainLock(spool_path, "spool replay") as held:`` ``held`` is False when another drainer has it."""

    def __init__(self, spool_path: str, holder: str) -> None:
        self.path = spool_path + LOCK_SUFFIX
        self.holder = holder
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if it is free; never waits."""
        # O_CLOEXEC: a subprocess started meanwhile must not inherit (and keep) the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.holder} (pid {os.getpid()})\n".encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # Closing the descriptor drops the lock; the file stays for the next drainer.
            os.close(fd)

    def current_holder(self) -> str:
        """Who holds the lock, as the holder wrote it ("" when unknown)."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as file:
                return file.read().strip()
        except OSError:
            return ""

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
