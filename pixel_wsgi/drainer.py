"""The background drainer: the running app re-sends its spooled events by itself.

Every ``[spool] drain_interval`` seconds, one thread per worker process wakes up and
tries to take the spool's ``DrainLock``. The one that gets it sends the events that
are due (their next attempt time has come), oldest first per destination, skipping a
destination whose circuit breaker is open or that asked to be left alone
(Retry-After), then shrinks the spool file and lets the lock go. The others find the
lock taken and sleep again, so there is one drainer per spool file however many
workers there are, and a killed worker's lock is free at once.

The thread is started by the first request a process serves, never in a constructor:
gunicorn's ``--preload`` builds the app before it forks, and a thread started then
would live only in the master. ``close()`` stops it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Iterable

from .drain_lock import DrainLock
from .replay import Replayer

logger = logging.getLogger(__name__)

HOLDER = "the background drainer"


class Drainer:
    def __init__(self, replayer: Replayer, names: Iterable[str], interval: float) -> None:
        self.replayer = replayer
        self.spool = replayer.spool
        self.names = tuple(names)
        self.interval = interval
        # Destination name -> time.time() before which it is not sent to (Retry-After).
        self._resume_at: dict[str, float] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_in = 0
        # Taken only by the first request of each process, to start the thread once.
        self._start_lock = threading.Lock()

    def ensure_running(self) -> None:
        """Start the thread in this process if it is not running yet; cheap on every request."""
        if self._started_in == os.getpid():
            return
        with self._start_lock:
            pid = os.getpid()
            if self._started_in == pid or self._stopping.is_set():
                return
            # After a fork, the parent's thread (if any) does not exist here: start anew.
            self._stopping = threading.Event()
            thread = threading.Thread(
                target=_run, args=(weakref.ref(self), self._stopping, self.interval), name="pixel-drainer", daemon=True
            )
            thread.start()
            self._thread, self._started_in = thread, pid

    def drain_once(self) -> bool:
        """One pass, if no other drainer holds the spool; ``False`` when another one does."""
        if not os.path.exists(self.spool.path):
            return True  # nothing was ever spooled: do not create the file
        lock = DrainLock(self.spool.path, HOLDER)
        if not lock.acquire():
            return False
        try:
            removed = 0
            for name in self.names:
                if self._stopping.is_set():
                    break
                now = time.time()
                if self._resume_at.get(name, 0.0) > now:
                    continue
                report = self.replayer.replay(name, due_at=now, stop=self._stopping)
                removed += report.delivered
                if report.retry_after is not None:
                    self._resume_at[name] = time.time() + report.retry_after
                if report.delivered or report.refused:
                    logger.info(
                        "drained the spool: %d events delivered to %s, %d refused%s",
                        report.delivered,
                        name,
                        report.refused,
                        f"; stopped: {report.stopped}" if report.stopped else "",
                    )
            if removed:
                self.spool.shrink()
        finally:
            lock.release()
        return True

    def close(self) -> None:
        """Stop the thread (after the send under way) and the replay threads."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None and self._started_in == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout=10)
        self.replayer.close()


def _run(drainer_ref: weakref.ReferenceType[Drainer], stopping: threading.Event, interval: float) -> None:
    # Only a weak reference between passes: an app that is dropped without close()
    # takes its drainer with it instead of draining a spool nobody serves any more.
    while not stopping.wait(interval):
        drainer = drainer_ref()
        if drainer is None:
            return
        try:
            drainer.drain_once()
        except Exception:  # a bad pass must not end draining for the life of the worker
            logger.exception("draining the spool failed; trying again in %gs", interval)
        del drainer
