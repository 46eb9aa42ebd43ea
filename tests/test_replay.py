"""Replaying and draining the spool in this process: real spool files, real HTTP sinks.

The subprocess side (gunicorn's drainer, two ``spool replay`` at once, the bound under
load) is in test_spool_scale.py.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from webtest import TestApp

from pixel_wsgi import ConfigError, PixelApp
from pixel_wsgi.config import build_destination
from pixel_wsgi.dispatch import CircuitBreaker
from pixel_wsgi.drain_lock import DrainLock
from pixel_wsgi.drainer import Drainer
from pixel_wsgi.replay import Replayer
from pixel_wsgi.spool import Spool, SpoolFull
from tests.support.delivery import delivery_config, track_url
from tests.support.sink import Reply, SilentServer, Sink, sink_fixture


@pytest.fixture
def sink():
    yield from sink_fixture()


@pytest.fixture
def spool(tmp_path):
    spool = Spool(str(tmp_path / "spool.sqlite3"))
    yield spool
    spool.close()


def event_body(message_id: str, padding: int = 0) -> bytes:
    event = {"type": "track", "event": "Opened", "messageId": message_id, "anonymousId": "a-1"}
    if padding:
        event["properties"] = {"padding": "x" * padding}
    return json.dumps(event).encode()


def fill(spool: Spool, destination: str, count: int, *, padding: int = 0, next_attempt_at: float | None = None) -> list[str]:
    message_ids = [f"m-{number}" for number in range(count)]
    for message_id in message_ids:
        spool.add(
            destination, message_id, "web", event_body(message_id, padding), attempts=1, error="down", next_attempt_at=next_attempt_at
        )
    return message_ids


def destination(name: str, kind: str, **options) -> Any:
    return build_destination(name, {"type": kind, **options})


def sent_message_ids(sink: Sink) -> list[str]:
    """Every messageId the sink took (2xx), whether posted alone or in a batch."""
    found: list[str] = []
    for request in sink.delivered:
        body = request.json
        found.extend(event["messageId"] for event in body["batch"]) if "batch" in body else found.append(body["messageId"])
    return found


# -- the bound ------------------------------------------------------------------------


def test_an_add_past_max_bytes_raises_spool_full_and_stores_nothing(tmp_path):
    spool = Spool(str(tmp_path / "spool.sqlite3"), max_bytes=1 << 20)
    try:
        stored = 0
        with pytest.raises(SpoolFull, match=r"at its bound of 1048576 bytes \(\[spool\] max_bytes\)"):
            while True:
                spool.add("hook", f"m-{stored}", "web", event_body(f"m-{stored}", 4000), attempts=1, error="down")
                stored += 1
        assert 200 < stored < 260  # 1 MiB of 4 KB events
        assert len(spool.all()) == stored
        database, _ = spool.size()
        assert database <= 1 << 20
    finally:
        spool.close()


def test_the_app_answers_503_spool_is_full_and_logs_it(tmp_path, caplog):
    # A port that is bound and not listening: connection refused, and no one else can take it.
    hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hold.bind(("127.0.0.1", 0))
    down_url = f"http://127.0.0.1:{hold.getsockname()[1]}"
    config = delivery_config(tmp_path, {"hook": {"type": "webhook", "url": down_url, "timeout": 0.2, "retries": 0}})
    config["spool"] |= {"max_bytes": 1 << 20, "drain_interval": 0}
    app = PixelApp(config)
    try:
        client = TestApp(app)
        answers = [client.get(track_url(f"m-{n}", **{"properties.padding": "x" * 8000}), expect_errors=True) for n in range(200)]
        statuses = Counter(answer.status_int for answer in answers)
        assert set(statuses) == {200, 503}, statuses
        full = next(answer for answer in answers if answer.status_int == 503)
        assert "spool is full" in full.text
        assert "rejected 503 /pixel/v1/track: spool is full" in caplog.text
        # The cause is logged when the spool becomes full, not once per event.
        assert caplog.text.count("is at its bound of 1048576 bytes ([spool] max_bytes)") == 1
        # A 200 means stored: every one of them is in the spool.
        accepted = {f"m-{n}" for n, answer in enumerate(answers) if answer.status_int == 200}
        assert {row.message_id for row in app.spool.all()} == accepted
    finally:
        app.close()
        hold.close()


def test_a_drained_spool_shrinks_back_even_with_dead_events_left(spool):
    memory = destination("hook", "memory")
    replayer = Replayer({"hook": memory}, spool)
    # Dead events stay until a person replays them: the file must shrink around them.
    for number in range(5):
        spool.add("hook", f"dead-{number}", "web", event_body(f"dead-{number}"), attempts=1, error="HTTP 400", dead=True)
    try:
        for cycle in ("first outage", "second outage"):
            fill(spool, "hook", 8000, padding=2000)
            grown = sum(spool.size())
            assert grown > 16_000_000
            assert replayer.replay("hook").delivered == 8000
            spool.shrink()
            database, wal = spool.size()
            print(f"\n{cycle}: 8,000 events, {grown / 1e6:.1f} MB; drained and shrunk: {database} B + {wal} B WAL")
            assert database < 100_000 and wal == 0
            assert len(spool.all()) == 5
            # Incremental vacuum is on from the first shrink: the second one uses it.
            assert spool._connection().execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    finally:
        replayer.close()


# -- replay ---------------------------------------------------------------------------


def test_parallel_replay_sends_each_event_once(spool, sink):
    message_ids = fill(spool, "hook", 500)
    hook = destination("hook", "webhook", url=sink.url)
    replayer = Replayer({"hook": hook}, spool, concurrency=8)
    try:
        report = replayer.replay("hook")
    finally:
        replayer.close()
        hook.close()
    assert (report.delivered, report.refused, report.stopped) == (500, 0, None)
    assert sorted(sent_message_ids(sink)) == sorted(message_ids)
    assert spool.all() == []


@pytest.mark.parametrize(
    ("kind", "url_option"),
    [pytest.param("rudderstack", "data_plane_url", id="rudderstack"), pytest.param("segment", "api_url", id="segment")],
)
def test_batch_destinations_replay_to_v1_batch(spool, sink, kind, url_option):
    message_ids = fill(spool, "rs", 250)
    target = destination("rs", kind, write_key="key-1", **{url_option: sink.url})
    replayer = Replayer({"rs": target}, spool, concurrency=2)
    try:
        assert replayer.replay("rs").delivered == 250
    finally:
        replayer.close()
        target.close()
    requests = sink.requests
    assert {request.path for request in requests} == {"/v1/batch"}
    assert sorted(len(request.json["batch"]) for request in requests) == [50, 100, 100]
    assert all(request.headers["Authorization"].startswith("Basic ") for request in requests)
    assert all(event["type"] == "track" for request in requests for event in request.json["batch"])
    assert sorted(sent_message_ids(sink)) == sorted(message_ids)


def test_batches_respect_batch_size_and_a_refused_batch_is_resent_one_by_one(spool, sink):
    fill(spool, "rs", 10)
    target = destination("rs", "rudderstack", write_key="key-1", data_plane_url=sink.url, batch_size=5)
    # The first batch is refused; sent alone, only its second event is; the second batch is taken.
    sink.script(Reply(400), Reply(200), Reply(400, body=b"bad event"), Reply(200), Reply(200), Reply(200), Reply(200))
    replayer = Replayer({"rs": target}, spool, concurrency=1)
    try:
        report = replayer.replay("rs")
    finally:
        replayer.close()
        target.close()
    assert (report.delivered, report.refused) == (9, 1)
    assert [request.path for request in sink.requests] == ["/v1/batch"] + ["/v1/track"] * 5 + ["/v1/batch"]
    (dead,) = spool.all()
    assert (dead.message_id, dead.dead, dead.response, dead.attempts) == ("m-1", True, "bad event", 2)


def test_a_retryable_failure_ends_the_run_and_sets_the_next_attempt(spool, sink):
    fill(spool, "hook", 5)
    hook = destination("hook", "webhook", url=sink.url)
    sink.script(Reply(200), Reply(429, headers={"Retry-After": "120"}))
    replayer = Replayer({"hook": hook}, spool, concurrency=1)
    try:
        report = replayer.replay("hook")
    finally:
        replayer.close()
        hook.close()
    assert (report.delivered, report.retry_after) == (1, 120.0)
    assert report.stopped == "HTTP 429 (messageId m-1)"
    rows = spool.all()
    assert [row.message_id for row in rows] == ["m-1", "m-2", "m-3", "m-4"]
    assert rows[0].next_attempt_at == pytest.approx(time.time() + 120, abs=5)
    assert len(sink.requests) == 2  # nothing was sent after the failure


# -- the background drainer -------------------------------------------------------------


def make_drainer(spool: Spool, sink: Sink, breaker: CircuitBreaker | None = None) -> Drainer:
    hook = destination("hook", "webhook", url=sink.url)
    replayer = Replayer({"hook": hook}, spool, breakers={"hook": breaker} if breaker else None)
    return Drainer(replayer, ["hook"], interval=3600)


def test_the_drainer_sends_only_due_events(spool, sink):
    due = fill(spool, "hook", 3, next_attempt_at=time.time() - 1)
    spool.add("hook", "later", "web", event_body("later"), attempts=1, error="down", next_attempt_at=time.time() + 600)
    drainer = make_drainer(spool, sink)
    try:
        assert drainer.drain_once()
    finally:
        drainer.close()
    assert sorted(sent_message_ids(sink)) == due
    assert [row.message_id for row in spool.all()] == ["later"]


def test_the_drainer_waits_out_retry_after_and_an_open_breaker(spool, sink):
    fill(spool, "hook", 3, next_attempt_at=time.time() - 1)
    sink.script(Reply(503, headers={"Retry-After": "600"}))
    drainer = make_drainer(spool, sink)
    try:
        drainer.drain_once()
        tried = len(sink.requests)  # those already under way when the 503 came, at most
        drainer.drain_once()  # the destination asked for 10 minutes: not asked again
        assert len(sink.requests) == tried
    finally:
        drainer.close()
    assert len(spool.all()) == 3 - len(sink.delivered)

    breaker = CircuitBreaker("hook", failures=1, cooldown=600)
    breaker.failure()
    drainer = make_drainer(spool, sink, breaker)
    spool._connection().execute("UPDATE spool SET next_attempt_at = NULL")
    left = len(spool.all())
    try:
        drainer.drain_once()
    finally:
        drainer.close()
    assert len(sink.requests) == tried and len(spool.all()) == left


def test_the_drainer_skips_a_pass_while_another_drainer_holds_the_spool(spool, sink):
    fill(spool, "hook", 3)
    drainer = make_drainer(spool, sink)
    other = DrainLock(spool.path, "spool replay")
    try:
        assert other.acquire()
        assert drainer.drain_once() is False
        assert sink.requests == []
        other.release()
        assert drainer.drain_once() is True
    finally:
        other.release()
        drainer.close()
    assert len(sink.delivered) == 3


def test_the_drainer_does_not_create_a_spool_file(tmp_path, sink):
    spool = Spool(str(tmp_path / "spool.sqlite3"))
    drainer = make_drainer(spool, sink)
    try:
        assert drainer.drain_once()
    finally:
        drainer.close()
        spool.close()
    assert list(tmp_path.iterdir()) == []


def drainer_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "pixel-drainer"]


def test_the_app_starts_its_drainer_on_the_first_request_and_stops_it_on_close(tmp_path, sink):
    # This app's own thread, not a count of every drainer thread in the process: the
    # drainers of earlier tests' apps end on their own schedule, and a count taken
    # around them was off by one when one ended meanwhile (seen in CI).
    config = delivery_config(tmp_path, {"hook": {"type": "webhook", "url": sink.url}})
    config["spool"]["drain_interval"] = 0.05
    app = PixelApp(config)
    assert app.drainer is not None
    try:
        # Built but not serving: nothing started (gunicorn --preload forks after this).
        assert app.drainer._thread is None
        # Events spooled by someone else meanwhile, due now.
        spool = Spool(config["spool"]["path"])
        fill(spool, "hook", 4, next_attempt_at=time.time() - 1)
        spool.close()
        TestApp(app).get(track_url("live"), status=200)
        thread = app.drainer._thread
        assert thread is not None and thread.is_alive() and thread in drainer_threads()
        sink.wait_for(5)
        deadline = time.monotonic() + 10
        while app.spool.all() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.spool.all() == []
        assert sorted(sent_message_ids(sink)) == ["live", "m-0", "m-1", "m-2", "m-3"]
    finally:
        app.close()
    assert not thread.is_alive()
    assert thread not in drainer_threads()


@pytest.mark.parametrize(
    ("spool_options", "message"),
    [
        pytest.param({"max_bytes": 1000}, "spool.max_bytes: must be at least 1048576", id="max-bytes-too-small"),
        pytest.param({"max_bytes": "1G"}, "spool.max_bytes: must be an integer", id="max-bytes-string"),
        pytest.param({"drain_interval": -1}, "spool.drain_interval: must be at least 0", id="negative-interval"),
    ],
)
def test_spool_options_are_validated(tmp_path: Path, spool_options, message):
    config = delivery_config(tmp_path, {"m": {"type": "memory"}})
    config["spool"] |= spool_options
    with pytest.raises(ConfigError, match=message):
        PixelApp(config)


def test_batch_size_is_validated():
    with pytest.raises(ConfigError, match="destinations.rs.batch_size: must be at least 1"):
        destination("rs", "rudderstack", write_key="k", data_plane_url="http://127.0.0.1:9", batch_size=0)


@pytest.mark.parametrize("kind", ["webhook", "rudderstack"])
def test_a_row_that_is_not_json_becomes_dead_and_the_rest_is_sent(spool, sink, kind):
    fill(spool, "hook", 3)
    spool._connection().execute("UPDATE spool SET event = '{not json' WHERE message_id = 'm-1'")
    options = {"url": sink.url} if kind == "webhook" else {"data_plane_url": sink.url, "write_key": "k"}
    target = destination("hook", kind, **options)
    replayer = Replayer({"hook": target}, spool)
    try:
        report = replayer.replay("hook")
    finally:
        replayer.close()
        target.close()
    assert (report.delivered, report.refused) == (2, 1)
    assert sorted(sent_message_ids(sink)) == ["m-0", "m-2"]
    (dead,) = spool.all()
    assert (dead.message_id, dead.dead, dead.last_error) == ("m-1", True, "the spooled event is not valid JSON")


def test_a_destination_that_never_answers_gets_one_round_of_requests_per_run(spool):
    """A black hole (accepts, never answers): each run costs one timeout per thread, not one per event."""
    fill(spool, "hook", 100)
    with SilentServer() as silent:
        hook = destination("hook", "webhook", url=silent.url, timeout=0.3)
        replayer = Replayer({"hook": hook}, spool, concurrency=4)
        try:
            report = replayer.replay("hook")
        finally:
            replayer.close()
            hook.close()
        assert silent.accepted <= 4  # one keep-alive connection per thread
    assert report.delivered == 0 and report.stopped is not None and "timed out" in report.stopped
    rows = spool.all()
    assert len(rows) == 100
    tried = [row for row in rows if row.attempts == 2]
    # Only what was under way when the first timeout came: at most two per thread.
    assert 1 <= len(tried) <= 8


def test_shrink_gives_up_on_a_reader_and_truncates_the_next_time(spool):
    """`spool list` (or any reader) in the middle of a read: the drain does not wait for it."""
    fill(spool, "hook", 2000, padding=1000)
    reader = sqlite3.connect(spool.path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM spool").fetchone()  # holds its snapshot
        spool._connection().execute("DELETE FROM spool")
        spool.shrink()  # no error, no five-second wait: the log stays for now
        assert spool.size()[1] > 0
        reader.execute("COMMIT")
    finally:
        reader.close()
    spool.shrink()
    assert spool.size() == (spool.size()[0], 0) and spool.size()[0] < 100_000
