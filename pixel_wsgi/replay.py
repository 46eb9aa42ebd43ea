"""Re-sending spooled events: oldest first, several at a time, in batches where a destination takes them.

Used by ``pixel-wsgi spool replay`` and by the background drainer; the caller holds the
spool's ``DrainLock``, so no other drainer reads the same rows meanwhile.

Rows are read a page at a time, oldest first, and cut into units (one event, or one
batch for a destination with ``deliver_batch``) that ``concurrency`` threads send: a
destination that answers in 10 ms takes at most 100 requests a second from one
thread, 800 from eight. What was delivered is removed in one transaction per page.

A retryable failure (connection refused, timeout, 5xx, 429) ends the run for that
destination once the units already under way are done: the rest wait for the next
run instead of hammering a destination that is down. A refusal (other 4xx) marks
that one event dead and the run goes on; a refused batch is re-sent one event at a
time, so only the events the destination rejects become dead.

With ``concurrency`` above 1, events under way at the same time may arrive out of
order; ``concurrency=1`` keeps the spool's order exactly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence, runtime_checkable

from .destinations import DeliveryError, Destination, Payload
from .spool import PAGE_SIZE, Spool, SpooledEvent

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8
# When an event that failed again is due, if the destination did not say (Retry-After).
RETRY_DELAY = 60.0
Outcome = tuple[SpooledEvent, "DeliveryError | None"]
# Stands for "not tried": its page had a retryable failure before its turn came.
SKIPPED = DeliveryError("not tried: an earlier event of this run failed")


@runtime_checkable
class BatchDestination(Protocol):
    """A destination that takes many events in one request."""

    batch_size: int
    max_batch_bytes: int

    def deliver_batch(self, payloads: Sequence[Payload]) -> None: ...


class Breaker(Protocol):
    """The dispatcher's circuit breaker for one destination, as the drainer uses it."""

    def allow(self) -> bool: ...

    def success(self) -> None: ...

    def failure(self) -> None: ...


@dataclass
class ReplayReport:
    destination: str
    delivered: int = 0
    # Events that the destination refused for good (4xx) during this run.
    refused: int = 0
    # Why the run stopped early for this destination, if it did.
    stopped: str | None = None
    # Seconds the destination asked to be left alone (Retry-After), if it did.
    retry_after: float | None = None


class Replayer:
    """Sends a destination's spooled events; see the module docstring.

    Nothing is started here: the threads are made on the first run, in the process
    that runs it, and stopped by ``close()``.
    """

    def __init__(
        self,
        destinations: Mapping[str, Destination],
        spool: Spool,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        breakers: Mapping[str, Breaker] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.destinations = destinations
        self.spool = spool
        self.concurrency = concurrency
        self.breakers = breakers or {}
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        # Kept for the Replayer's life: each thread keeps its own keep-alive connection
        # to the destination, which a new thread per run would open (and leave) again.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="pixel-replay")
        return self._executor

    def replay(self, name: str, *, dead: bool = False, due_at: float | None = None, stop: threading.Event | None = None) -> ReplayReport:
        """Send destination ``name``'s waiting events (dead ones too with ``dead``).

        ``due_at``: only rows whose next attempt time has come by then (the drainer);
        ``None`` sends every waiting row now (a person asked for it). ``stop`` ends the
        run once the units under way are done.
        """
        destination = self.destinations[name]
        breaker = self.breakers.get(name)
        report = ReplayReport(name)
        batching = destination if isinstance(destination, BatchDestination) else None
        unit_size = batching.batch_size if batching is not None else 1
        pool = self._pool()
        # Set by the first retryable failure: units not sent yet are skipped.
        failed = threading.Event()
        # Units under way, oldest first. Twice the threads: a thread that finishes finds
        # the next unit waiting instead of waiting for the slowest of a page.
        window: deque[Future[list[Outcome]]] = deque()
        done: list[Outcome] = []

        def settle() -> None:
            self._settle(name, done, report)
            if breaker is not None:
                if failed.is_set():
                    breaker.failure()
                elif any(error is None for _, error in done):
                    breaker.success()
            done.clear()

        # A page keeps every thread busy; its outcome is written in one transaction.
        page_size = max(PAGE_SIZE, unit_size * self.concurrency)
        for page in self.spool.pages(name, dead=dead, due_at=due_at, size=page_size):
            if failed.is_set() or (stop is not None and stop.is_set()):
                break
            if breaker is not None and not breaker.allow():
                report.stopped = "circuit open"
                break
            for unit in _units(page, batching) if batching is not None else [[row] for row in page]:
                if stop is not None and stop.is_set():
                    break  # closing: finish what is under way, send nothing more
                window.append(pool.submit(self._send, destination, unit, failed))
                while len(window) >= 2 * self.concurrency:
                    done.extend(window.popleft().result())
                if len(done) >= page_size:
                    settle()
        while window:
            done.extend(window.popleft().result())
        settle()
        return report

    def _send(self, destination: Destination, unit: list[SpooledEvent], failed: threading.Event) -> list[Outcome]:
        """Runs in a pool thread: one event or one batch; a refused batch again one by one."""
        if failed.is_set():
            return [(row, SKIPPED) for row in unit]
        try:
            payloads = [Payload(row.decoded(), row.source, row.event.encode("utf-8")) for row in unit]
        except ValueError:
            # A row edited by hand (or written by something else) that is not an event:
            # no destination can take it, so it is kept as dead for a person to look at.
            if len(unit) > 1:
                return [item for row in unit for item in self._send(destination, [row], failed)]
            return [(unit[0], DeliveryError("the spooled event is not valid JSON", retryable=False))]
        error = _attempt(destination, payloads)
        if error is None:
            return [(row, None) for row in unit]
        if error.retryable:
            failed.set()
            return [(row, error) for row in unit]
        if len(unit) == 1:
            return [(unit[0], error)]
        logger.warning("batch of %d events refused by %s (%s): sending them one at a time", len(unit), destination.name, error)
        return [item for row in unit for item in self._send(destination, [row], failed)]

    def _settle(self, name: str, results: list[Outcome], report: ReplayReport) -> None:
        """Write the outcome of one page to the spool, and to the log for each failure."""
        delivered = [row.id for row, error in results if error is None]
        if delivered:
            self.spool.remove_all(delivered)
            report.delivered += len(delivered)
        now = time.time()
        logged = 0
        for row, error in results:
            if error is None or error is SKIPPED:
                continue
            if error.retryable:
                if error.retry_after is not None:
                    report.retry_after = max(report.retry_after or 0.0, error.retry_after)
                if report.stopped is None:
                    report.stopped = f"{error} (messageId {row.message_id})"
                retry_in = error.retry_after if error.retry_after is not None else RETRY_DELAY
                next_attempt_at: float | None = now + retry_in
            else:
                report.refused += 1
                next_attempt_at = None
            # One line per event, except for a batch that failed as a whole: one for all of it.
            if not error.retryable or logged == 0:
                logger.warning(
                    "replay to %s failed: %s (messageId %s); %s",
                    name,
                    error,
                    row.message_id,
                    "kept as dead" if not error.retryable else "kept in the spool",
                )
                logged += 1
            try:
                self.spool.record_failure(
                    row.id,
                    attempts=1,
                    error=str(error),
                    response=error.response,
                    next_attempt_at=next_attempt_at,
                    dead=row.dead or not error.retryable,
                )
            except Exception:  # the row stays as it was: it is sent again next time, nothing is lost
                logger.exception("could not record the failed attempt for messageId %s in the spool", row.message_id)
        retryable = sum(1 for _, error in results if error is not None and error is not SKIPPED and error.retryable)
        if retryable > 1:
            logger.warning("replay to %s: %d events failed in this run and stay in the spool", name, retryable)

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


def _attempt(destination: Destination, payloads: list[Payload]) -> DeliveryError | None:
    """One delivery attempt, no retries: the next run is the retry."""
    try:
        if len(payloads) == 1:
            destination.deliver_within(payloads[0], None)
        else:
            assert isinstance(destination, BatchDestination)
            destination.deliver_batch(payloads)
    except DeliveryError as exc:
        return exc
    except Exception as exc:  # a user's destination must never end the replay
        return DeliveryError(f"{type(exc).__name__}: {exc}")
    return None


def _units(page: list[SpooledEvent], destination: BatchDestination) -> list[list[SpooledEvent]]:
    """The page cut into batches of at most ``batch_size`` events and ``max_batch_bytes``."""
    units: list[list[SpooledEvent]] = []
    current: list[SpooledEvent] = []
    size = 0
    for row in page:
        length = len(row.event) + 1
        if current and (len(current) >= destination.batch_size or size + length > destination.max_batch_bytes):
            units.append(current)
            current, size = [], 0
        current.append(row)
        size += length
    if current:
        units.append(current)
    return units
