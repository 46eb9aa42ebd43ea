"""The dispatch budget is a wall clock, and one slow destination does not starve the others.

Every fault here is real: a server that sends its answer one byte every two seconds
(status line and headers included, where a per-receive read timeout never fires),
one that answers with a 10 MB body, and a second process holding a SQLite write lock.
"""

from __future__ import annotations

import itertools
import time

import pytest
from webtest import TestApp

from pixel_wsgi import PixelApp
from pixel_wsgi.destinations.http import MAX_RESPONSE_TEXT
from pixel_wsgi.spool import Spool
from tests.support.delivery import delivery_config, spooled_message_ids, track_url
from tests.support.locks import write_lock_held_by_another_process
from tests.support.servers import http_get, serve_in_thread
from tests.support.sink import Sink
from tests.support.trickle import TrickleServer

BUDGET = 1.0
# What a request may take beyond the budget: spooling and answering.
GRACE = 0.25


@pytest.fixture
def make_app(tmp_path):
    apps: list[PixelApp] = []

    def make(destinations: dict, **dispatch) -> tuple[PixelApp, TestApp]:
        app = PixelApp(delivery_config(tmp_path, destinations, **{"budget": BUDGET, **dispatch}))
        apps.append(app)
        return app, TestApp(app)

    yield make
    for app in apps:
        app.close()


def timed_get(client: TestApp, url: str, status: int = 200) -> float:
    started = time.monotonic()
    client.get(url, status=status)
    return time.monotonic() - started


def test_a_trickling_answer_is_cut_at_the_deadline_and_opens_the_breaker(make_app, tmp_path):
    """Regression: urllib3's read timeout restarts at every byte, so an answer of one byte
    every 2 s held each request ~32 s and the breaker never opened."""
    # The default budget and timeout: each byte comes well within the 3 s a receive may wait.
    with TrickleServer(interval=2.0) as slow:
        hook = {"type": "webhook", "url": slow.url, "timeout": 5.0, "retries": 3}
        app, client = make_app({"hook": hook}, budget=3.0, breaker_failures=2, breaker_cooldown=60.0)
        for number in range(3):
            assert timed_get(client, track_url(f"m-trickle-{number}")) < 3.0 + GRACE
        # Two deliveries cut off by the deadline opened the circuit: the third was not tried.
        assert app.dispatcher.breakers["hook"].is_open
        assert slow.requests == 2
        assert spooled_message_ids(tmp_path / "spool.sqlite3") == {"m-trickle-0", "m-trickle-1", "m-trickle-2"}
        assert "timed out" in app.spool.all()[0].last_error


@pytest.mark.parametrize("order", [pytest.param(["slow", "good"], id="slow-first"), pytest.param(["good", "slow"], id="slow-last")])
def test_a_healthy_destination_beside_a_hanging_one_receives_the_event_directly(make_app, tmp_path, order):
    # A byte every 0.5 s: each receive succeeds within the 1 s budget, the answer never ends.
    with TrickleServer(interval=0.5) as slow, Sink() as good:
        destinations = {
            "slow": {"type": "webhook", "url": slow.url, "timeout": 5.0},
            "good": {"type": "webhook", "url": good.url, "timeout": 5.0},
        }
        app, client = make_app({name: destinations[name] for name in order})
        assert timed_get(client, track_url("m-beside")) < BUDGET + GRACE
        assert good.delivered_message_ids() == ["m-beside"]
        assert [(row.destination, row.message_id) for row in app.spool.all()] == [("slow", "m-beside")]


def test_a_10_mb_answer_is_not_read_whole(make_app, tmp_path):
    size = 10 * 1024 * 1024
    with TrickleServer(body_size=size) as big:
        app, client = make_app({"hook": {"type": "webhook", "url": big.url, "timeout": 5.0}}, budget=5.0)
        client.get(track_url("m-big-1"), status=200)
        client.get(track_url("m-big-2"), status=200)
        # A 2xx status is a delivery; the rest of the body was never read.
        assert app.spool.all() == []
        assert big.requests == 2
        assert big.finished_bodies == 0
        assert big.bytes_sent < size


def test_a_10_mb_error_page_is_kept_short_in_the_spool(make_app):
    with TrickleServer(body_size=10 * 1024 * 1024, status=500) as big:
        app, client = make_app({"hook": {"type": "webhook", "url": big.url, "timeout": 5.0, "retries": 0}}, budget=5.0)
        client.get(track_url("m-big-error"), status=200)
        [row] = app.spool.all()
        assert row.last_error == "HTTP 500"
        assert row.response == "x" * MAX_RESPONSE_TEXT
        assert big.finished_bodies == 0


def test_a_sqlite_lock_held_by_another_process_costs_one_budget_and_starves_nobody(make_app, tmp_path):
    """Regression: a lock held elsewhere held requests for the 5 s busy timeout against a
    3 s budget, and the other destinations' copies were spooled without being tried."""
    store = tmp_path / "events.sqlite3"
    with Sink() as good:
        app, client = make_app(
            {"store": {"type": "sqlite", "path": str(store), "journal": False}, "good": {"type": "webhook", "url": good.url}}
        )
        client.get(track_url("m-before-lock"), status=200)  # creates the store
        with write_lock_held_by_another_process(store):
            assert timed_get(client, track_url("m-locked")) < BUDGET + GRACE
        assert good.delivered_message_ids() == ["m-before-lock", "m-locked"]
        assert [(row.destination, row.message_id) for row in app.spool.all()] == [("store", "m-locked")]
        assert "locked" in app.spool.all()[0].last_error


def test_a_locked_spool_is_waited_for_only_until_the_grace_ends(make_app, tmp_path):
    """Store and spool both locked by another process: the answer is a 503 (the event is
    not safe), and it comes within budget + 0.25 s."""
    store, spool = tmp_path / "events.sqlite3", tmp_path / "spool.sqlite3"
    app, client = make_app({"store": {"type": "sqlite", "path": str(store), "journal": False}})
    client.get(track_url("m-first"), status=200)
    existing = Spool(str(spool))
    existing.counts()  # the spool exists (with its table), so it can be locked
    existing.close()
    with write_lock_held_by_another_process(store), write_lock_held_by_another_process(spool):
        assert timed_get(client, track_url("m-all-locked"), status=503) < BUDGET + GRACE


def test_a_wall_clock_jump_changes_no_deadline(make_app, monkeypatch):
    """Deadlines and the breaker's cool-down read the monotonic clock: an NTP step of an
    hour back (here, ``time.time`` made to jump on every read) neither stretches nor
    cuts a delivery."""
    real_time = time.time
    jumps = itertools.cycle([-3600.0, 0.0, 3600.0])
    monkeypatch.setattr(time, "time", lambda: real_time() + next(jumps))
    with TrickleServer(interval=0.5) as slow:
        app, client = make_app({"hook": {"type": "webhook", "url": slow.url, "timeout": 5.0}})
        elapsed = timed_get(client, track_url("m-clock"))
    assert elapsed < BUDGET + GRACE
    assert [row.message_id for row in app.spool.all()] == ["m-clock"]


def test_a_lock_held_elsewhere_costs_one_budget_on_a_thread_per_request_server(tmp_path):
    """Each request thread of werkzeug's threaded server (``pixel-wsgi serve``) opens its
    own connection: opening one must not wait the busy timeout either."""
    store = tmp_path / "events.sqlite3"
    app = PixelApp(delivery_config(tmp_path, {"store": {"type": "sqlite", "path": str(store), "journal": False}}, budget=BUDGET))
    try:
        with serve_in_thread(app) as base:
            assert http_get(base + track_url("m-before"))[0] == 200
            with write_lock_held_by_another_process(store):
                for number in range(3):
                    started = time.monotonic()
                    assert http_get(base + track_url(f"m-locked-{number}"))[0] == 200
                    assert time.monotonic() - started < BUDGET + GRACE
        assert {row.message_id for row in app.spool.all()} == {"m-locked-0", "m-locked-1", "m-locked-2"}
    finally:
        app.close()
