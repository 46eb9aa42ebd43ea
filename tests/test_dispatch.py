"""Dispatch through the app against a real HTTP sink: retries, budget, spool, circuit breaker."""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest
from webtest import TestApp

from pixel_wsgi import ConfigError, PixelApp
from pixel_wsgi.dispatch import SPOOL_RETRY_DELAY
from pixel_wsgi.spool import Spool
from tests.support.delivery import WRITE_KEY, delivery_config, track_url
from tests.support.sink import Reply, SilentServer, Sink, sink_fixture


@pytest.fixture
def sink():
    yield from sink_fixture()


@pytest.fixture
def make_app(tmp_path):
    """Build a PixelApp for one webhook; every app built is closed afterwards."""
    apps: list[PixelApp] = []

    def make(url: str, *, hook: dict | None = None, **dispatch) -> tuple[PixelApp, TestApp]:
        config = delivery_config(tmp_path, {"hook": {"type": "webhook", "url": url, "timeout": 0.3, **(hook or {})}}, **dispatch)
        app = PixelApp(config)
        apps.append(app)
        return app, TestApp(app)

    yield make
    for app in apps:
        app.close()


def spooled(app: PixelApp) -> list:
    return app.spool.all()


def test_500_then_200_is_delivered_once(sink, make_app):
    app, client = make_app(sink.url)
    sink.script(Reply(500), Reply(200))
    client.get(track_url("m-retry"), status=200)
    assert [r.status for r in sink.requests] == [500, 200]
    assert sink.delivered_message_ids() == ["m-retry"]
    assert spooled(app) == []


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        pytest.param(Reply(delay=1.0), "timed out", id="slower-than-read-timeout"),
        pytest.param(Reply(drop=True), "Connection broken", id="closed-mid-response"),
        pytest.param(Reply(503), "HTTP 503", id="503"),
    ],
)
def test_retryable_failures_are_retried_then_spooled(sink, make_app, caplog, reply, error):
    app, client = make_app(sink.url, hook={"retries": 1}, budget=2.0)
    sink.default = reply
    with caplog.at_level(logging.WARNING, logger="pixel_wsgi"):
        client.get(track_url("m-fail"), status=200)
    assert len(sink.wait_for(2)) == 2  # the first attempt and one retry
    (row,) = spooled(app)
    assert (row.destination, row.message_id, row.attempts, row.dead) == ("hook", "m-fail", 2, False)
    assert error in row.last_error
    assert row.next_attempt_at == pytest.approx(time.time() + SPOOL_RETRY_DELAY, abs=2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "hook" in warnings[0].getMessage() and "m-fail" in warnings[0].getMessage()


def test_connection_refused_is_spooled(make_app):
    with Sink() as gone:
        url = gone.url
    app, client = make_app(url, hook={"retries": 2})
    client.get(track_url("m-refused"), status=200)
    (row,) = spooled(app)
    assert row.attempts == 3
    assert "Connection refused" in row.last_error


def test_400_is_dead_and_not_retried(sink, make_app):
    app, client = make_app(sink.url)
    sink.script(Reply(400, body=b'{"error": "invalid event"}'))
    client.get(track_url("m-bad"), status=200)
    assert len(sink.requests) == 1
    (row,) = spooled(app)
    assert (row.dead, row.attempts, row.last_error) == (True, 1, "HTTP 400")
    assert row.response == '{"error": "invalid event"}'
    assert row.next_attempt_at is None


def test_429_retry_after_is_honoured_within_the_budget(sink, make_app):
    app, client = make_app(sink.url, budget=3.0)
    sink.script(Reply(429, headers={"Retry-After": "1"}), Reply(200))
    started = time.monotonic()
    client.get(track_url("m-429"), status=200)
    assert time.monotonic() - started >= 1.0
    assert sink.delivered_message_ids() == ["m-429"]
    assert spooled(app) == []


def test_429_retry_after_beyond_the_budget_spools_at_once(sink, make_app):
    app, client = make_app(sink.url, budget=1.0)
    sink.script(Reply(429, headers={"Retry-After": "120"}))
    started = time.monotonic()
    client.get(track_url("m-later"), status=200)
    assert time.monotonic() - started < 0.9
    (row,) = spooled(app)
    assert row.next_attempt_at == pytest.approx(time.time() + 120, abs=5)


def test_budget_bounds_the_request(make_app):
    """A destination that never answers costs one budget, not timeout × attempts."""
    with SilentServer() as silent:
        app, client = make_app(silent.url, hook={"timeout": 5.0, "retries": 5}, budget=0.5)
        started = time.monotonic()
        client.get(track_url("m-budget"), status=200)
        assert time.monotonic() - started < 1.5
    assert len(spooled(app)) == 1


def test_circuit_breaker_sends_a_dead_destination_straight_to_the_spool(make_app, caplog):
    with SilentServer() as silent:
        app, client = make_app(silent.url, hook={"timeout": 0.1, "retries": 0}, budget=1.0, breaker_failures=3, breaker_cooldown=0.5)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="pixel_wsgi"):
            for number in range(50):
                client.get(track_url(f"m-{number}"), status=200)
        elapsed = time.monotonic() - started
        # Three failures open the circuit; at most one probe per cooldown after that.
        assert silent.accepted <= 3 + 1 + int(elapsed / 0.5)
        assert silent.accepted <= 6
    assert len(spooled(app)) == 50
    assert any("circuit open" in r.getMessage() for r in caplog.records)
    assert elapsed < 3.0


def test_breaker_probe_closes_the_circuit_when_the_destination_is_back(sink, make_app):
    app, client = make_app(sink.url, hook={"retries": 0}, breaker_failures=2, breaker_cooldown=0.2)
    sink.default = Reply(500)
    for number in range(4):
        client.get(track_url(f"m-{number}"), status=200)
    assert len(sink.requests) == 2  # the circuit opened after two
    sink.default = Reply(200)
    time.sleep(0.25)
    client.get(track_url("m-probe"), status=200)
    client.get(track_url("m-after"), status=200)
    assert sink.delivered_message_ids() == ["m-probe", "m-after"]
    assert not app.dispatcher.breakers["hook"].is_open


def test_spool_write_failure_answers_503(sink, make_app, tmp_path):
    app, client = make_app(sink.url, hook={"retries": 0})
    sink.default = Reply(500)
    # The spool cannot be written (its directory is gone): the event is neither delivered nor kept.
    app.spool.path = str(tmp_path / "missing-dir" / "spool.sqlite3")
    client.get(track_url("m-lost"), status=503)


def test_every_destination_or_the_spool(sink, tmp_path):
    """With two destinations, one failing: 200, one delivered, one spooled."""
    config = delivery_config(
        tmp_path,
        {
            "good": {"type": "webhook", "url": sink.url + "/good"},
            "bad": {"type": "tests.support.destinations:AlwaysFailingDestination"},
        },
    )
    app = PixelApp(config)
    try:
        TestApp(app).get(track_url("m-two"), status=200)
        assert [r.path for r in sink.delivered] == ["/good"]
        assert [(row.destination, row.dead) for row in app.spool.all()] == [("bad", True)]
    finally:
        app.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"this is not a database, just text" * 100, "spool.path: .* cannot be used as a spool", id="not-sqlite"),
        pytest.param(None, "spool.path: .* another shape", id="other-table"),
    ],
)
def test_unusable_spool_is_a_start_up_error(tmp_path, content, message):
    path = tmp_path / "spool.sqlite3"
    if content is None:
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE spool (id INTEGER, what TEXT)")
        connection.commit()
        connection.close()
    else:
        path.write_bytes(content)
    config = delivery_config(tmp_path, {"m": {"type": "memory"}})
    with pytest.raises(ConfigError, match=message):
        PixelApp(config)


def test_missing_spool_directory_is_a_start_up_error(tmp_path):
    config = delivery_config(tmp_path, {"m": {"type": "memory"}})
    config["spool"]["path"] = str(tmp_path / "nowhere" / "spool.sqlite3")
    with pytest.raises(ConfigError, match="spool.path: the folder .* does not exist"):
        PixelApp(config)


def test_start_up_check_creates_no_file(tmp_path):
    app = PixelApp(delivery_config(tmp_path, {"m": {"type": "memory"}}))
    app.close()
    assert not (tmp_path / "spool.sqlite3").exists()


def test_write_keys_are_never_logged(make_app, tmp_path, caplog):
    with Sink() as gone:
        url = gone.url
    config = delivery_config(
        tmp_path, {"rs": {"type": "rudderstack", "data_plane_url": url, "write_key": "secret-write-key-123", "retries": 0}}
    )
    app = PixelApp(config)
    try:
        with caplog.at_level(logging.DEBUG, logger="pixel_wsgi"):
            TestApp(app).get(track_url("m-key"), status=200)
        assert caplog.records
        assert "secret-write-key-123" not in caplog.text
        assert WRITE_KEY not in caplog.text
        assert "secret-write-key-123" not in repr(app.destination("rs"))
    finally:
        app.close()


def test_spool_is_shared_between_spool_objects(tmp_path):
    """Two Spool objects (two workers) on one file see each other's rows."""
    path = str(tmp_path / "spool.sqlite3")
    first, second = Spool(path), Spool(path)
    try:
        first.add("hook", "m-1", "web", b'{"messageId":"m-1"}', attempts=1, error="HTTP 500")
        second.add("hook", "m-2", "web", b'{"messageId":"m-2"}', attempts=1, error="HTTP 500", dead=True)
        assert first.counts() == {"hook": (1, 1)}
        assert [row.message_id for row in second.events("hook", dead=True)] == ["m-1", "m-2"]
        assert [row.message_id for row in second.events("hook")] == ["m-1"]
    finally:
        first.close()
        second.close()
