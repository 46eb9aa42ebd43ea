"""Synchronous delivery of one event to the destinations of its source.

The app only asks ``dispatcher.dispatch(payload, names)`` and gets back whether the
event is safe: delivered to every destination, or in the spool for the ones that did
not take it (``SpoolFull`` when the spool has no room for it). How destinations fail, are retried, are spooled and are cut off by a
circuit breaker is decided here.

Time is one wall clock per request: ``[dispatch] budget`` seconds for every delivery
and retry (HTTP reads, SQLite locks included), shared fairly between the
destinations, then a short grace to spool what is left. A request never takes
longer than ``budget + SPOOL_GRACE`` plus the time to build its answer.

Delivery is at least once. A request that timed out may still have arrived, and its
event is then spooled and sent again; the ``messageId`` is kept so that destinations
can drop the duplicate.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from .config import DispatchConfig, DispatchSchema, default_settings
from .destinations import DeliveryError, Destination, Payload
from .logsafe import log_safe
from .observer import Observer
from .spool import Spool, SpoolFull

logger = logging.getLogger(__name__)

# The first retry waits about this long, each next one twice as long (with jitter,
# so that the workers that failed together do not retry together), up to BACKOFF_MAX.
BACKOFF_BASE = 0.05
BACKOFF_MAX = 2.0
# When an event spooled by a pixel request is due again if the destination did not say
# (Retry-After): soon, so that the background drainer's next pass after the destination
# comes back sends it. A destination still down costs one failed try per pass (the
# pass stops at the first failure), and the circuit breaker spaces those too.
SPOOL_RETRY_DELAY = 10.0
# Seconds after the budget in which the events not delivered are written to the spool
# (a spool locked by another process is waited for this long at most): what keeps a
# request within budget + 0.25 s, with time left to answer it.
SPOOL_GRACE = 0.15


def backoff(retry: int) -> float:
    """Seconds before retry number ``retry`` (1, 2, ...): exponential, with "equal jitter"."""
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2.0 ** (retry - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass
class Outcome:
    """What came of delivering one event to one destination, retries included."""

    attempts: int
    error: DeliveryError | None = None
    # Seconds until trying again makes sense (Retry-After, or SPOOL_RETRY_DELAY).
    retry_in: float = SPOOL_RETRY_DELAY


class CircuitBreaker:
    """Per destination and per process: after ``failures`` failed deliveries in a row, the
    circuit opens and events go straight to the spool; after ``cooldown`` seconds one
    request is let through as a probe, and its result closes or reopens the circuit.

    The request path reads two attributes without a lock; the lock is only taken to
    change state, which happens on failures and on the first success after them.
    """

    def __init__(self, name: str, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.threshold = failures
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probe_started: float | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def allow(self) -> bool:
        """Whether to try the destination now (``False``: spool without trying)."""
        if self.opened_at is None:
            return True
        with self._lock:
            if self.opened_at is None:
                return True
            now = self.clock()
            if now - self.opened_at < self.cooldown:
                return False
            # One probe at a time; a probe that never came back frees the slot after a cooldown.
            if self._probe_started is not None and now - self._probe_started < self.cooldown:
                return False
            self._probe_started = now
            return True

    def success(self) -> None:
        if self.failures == 0 and self.opened_at is None:
            return
        with self._lock:
            if self.opened_at is not None:
                logger.warning("destination %s answers again: circuit closed", self.name)
            self.failures = 0
            self.opened_at = None
            self._probe_started = None

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.opened_at is not None:
                # The probe failed: another cooldown.
                self.opened_at = self.clock()
                self._probe_started = None
            elif self.failures >= self.threshold:
                self.opened_at = self.clock()
                logger.warning(
                    "destination %s failed %d times in a row: circuit open, its events go to the spool for %gs",
                    self.name,
                    self.failures,
                    self.cooldown,
                )


class Dispatcher:
    def __init__(
        self,
        destinations: Mapping[str, Destination],
        spool: Spool | None = None,
        settings: DispatchConfig | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.destinations = dict(destinations)
        self.spool = spool
        self.settings: DispatchConfig = settings or default_settings(DispatchSchema)
        self.sleep = sleep
        self.breakers = {
            name: CircuitBreaker(name, self.settings.breaker_failures, self.settings.breaker_cooldown) for name in self.destinations
        }
        # Told each event's outcome per destination (metrics); set by the app.
        self.observer: Observer | None = None

    def dispatch(self, payload: Payload, names: Iterable[str]) -> bool:
        """Deliver to each named destination or spool; ``True`` when the event is safe everywhere."""
        deadline = time.monotonic() + self.settings.budget
        names = names if isinstance(names, (tuple, list)) else tuple(names)
        # (destination, outcome, seconds spent trying), spooled once every destination had its turn
        undelivered: list[tuple[str, Outcome, float]] = []
        skipped: set[str] = set()
        for index, name in enumerate(names):
            breaker = self.breakers[name]
            if not breaker.allow():
                # Not a delivery failure (nothing was tried), so no WARNING per event:
                # the breaker logged once when it opened.
                undelivered.append((name, Outcome(0, DeliveryError("circuit open: not tried"), breaker.cooldown), 0.0))
                skipped.add(name)
                continue
            # Each destination still to go gets an equal share of the time left, so one
            # that hangs cannot take the time of those after it; what a quick one leaves
            # goes to the next.
            now = time.monotonic()
            share_ends = now + (deadline - now) / (len(names) - index)
            outcome = self.deliver(self.destinations[name], payload, share_ends)
            error = outcome.error
            if error is None:
                breaker.success()
                if self.observer is not None:
                    self._observe(name, "delivered", time.monotonic() - now, breaker)
                continue
            if outcome.attempts:
                # A refusal (4xx) says the destination is up: only retryable failures
                # count, and a delivery cut off by the deadline is one of them.
                if error.retryable:
                    breaker.failure()
                else:
                    breaker.success()
            undelivered.append((name, outcome, time.monotonic() - now))
        safe = True
        spool_deadline = max(deadline, time.monotonic()) + SPOOL_GRACE if undelivered else 0.0
        for name, outcome, seconds in undelivered:
            # A skip by an open circuit is no failure of its own (the breaker logged once).
            tried = name not in skipped
            try:
                kept = self._spool(name, payload, outcome, spool_deadline)
            except SpoolFull:
                if tried:
                    self._log_failure(name, payload.message_id, outcome, "not spooled: the spool is full")
                raise
            # Logged once the spool has answered: the line says what became of the event.
            if tried:
                self._log_failure(name, payload.message_id, outcome, None if kept else "NOT spooled: the spool failed")
            safe = kept and safe
            if self.observer is not None:
                dead = outcome.error is not None and not outcome.error.retryable
                self._observe(name, ("dead" if dead else "spooled") if kept else "lost", seconds, self.breakers[name])
        return safe

    def _observe(self, name: str, outcome: str, seconds: float, breaker: CircuitBreaker) -> None:
        assert self.observer is not None
        try:
            self.observer.delivery(name, outcome, seconds, breaker.is_open)
        except Exception:  # bookkeeping must never cost the client its answer
            logger.exception("observer failed on a delivery to %s", name)

    def deliver(self, destination: Destination, payload: Payload, deadline: float) -> Outcome:
        """Try, and retry what may succeed on retry, until delivered, refused or out of time."""
        attempts = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = DeliveryError("dispatch budget spent" + (" before the first attempt" if not attempts else ""))
                return Outcome(attempts, error)
            attempts += 1
            try:
                destination.deliver_within(payload, remaining)
                return Outcome(attempts)
            except DeliveryError as exc:
                error = exc
            except Exception as exc:  # a user's destination must never break the request
                error = DeliveryError(f"{type(exc).__name__}: {exc}")
            if not error.retryable:
                return Outcome(attempts, error)
            delay = error.retry_after if error.retry_after is not None else backoff(attempts)
            if attempts > destination.retries or time.monotonic() + delay >= deadline:
                # Due again when the destination asked, or in a minute: not after one more backoff.
                return Outcome(attempts, error, error.retry_after if error.retry_after is not None else SPOOL_RETRY_DELAY)
            logger.debug(
                "delivery to %s: attempt %d failed (%s); retrying in %.3fs", destination.name, attempts, log_safe(str(error)), delay
            )
            self.sleep(delay)

    def _spool(self, name: str, payload: Payload, outcome: Outcome, deadline: float | None = None) -> bool:
        error = outcome.error
        assert error is not None
        if self.spool is None:
            return False
        dead = not error.retryable
        try:
            self.spool.add(
                name,
                payload.message_id,
                payload.source,
                payload.body,
                attempts=outcome.attempts,
                error=str(error),
                response=error.response,
                next_attempt_at=None if dead else time.time() + outcome.retry_in,
                dead=dead,
                wait=None if deadline is None else deadline - time.monotonic(),
            )
        except SpoolFull:
            # Out of dispatch(): the app answers "503 spool is full" and logs it. The
            # event's other destinations are not tried: the client is told to send it
            # again, and whatever they refused could not be spooled either.
            raise
        except Exception:  # the spool failing is the one case that costs the client a 503
            logger.exception("the spool could not keep the event for %s (messageId %s)", name, log_safe(payload.message_id))
            return False
        return True

    @staticmethod
    def _log_failure(name: str, message_id: str, outcome: Outcome, fate: str | None = None) -> None:
        """One WARNING per failed delivery, with what became of the event (``fate``; by
        default what the spool did with it)."""
        error = outcome.error
        assert error is not None
        logger.warning(
            "delivery to %s failed: %s (messageId %s, %d attempt%s); %s",
            name,
            log_safe(str(error)),
            log_safe(message_id),
            outcome.attempts,
            "" if outcome.attempts == 1 else "s",
            fate or ("spooled" if error.retryable else "spooled as dead"),
        )

    def close(self) -> None:
        for destination in self.destinations.values():
            try:
                destination.close()
            except Exception:  # closing is best effort; report and go on with the rest
                logger.exception("closing destination %s failed", destination.name)
        if self.spool is not None:
            self.spool.close()
