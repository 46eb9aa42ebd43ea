"""Regressions from a fresh-eyes attack on the running service (a tester given the
contract and the service, not the tests). Each test pins one finding."""

from __future__ import annotations

import base64
import json
import logging
import textwrap
import time
from urllib.parse import urlencode

import pytest
from webtest import TestApp

from pixel_wsgi import ConfigError, PixelApp
from pixel_wsgi.destinations.http import MAX_RETRY_AFTER, parse_retry_after
from pixel_wsgi.signing import sign
from pixel_wsgi.testing import memory_app

from .support.delivery import delivery_config, track_url
from .support.sink import Reply, Sink

SEGMENT = "/v1/pixel"
SECRET = "0123456789abcdef-secret"


def segment_data(call: dict) -> str:
    return base64.b64encode(json.dumps(call).encode("utf-8")).decode("ascii")


@pytest.fixture
def segment():
    app, events = memory_app(segment_prefix=SEGMENT)
    yield TestApp(app), events
    app.close()


@pytest.mark.parametrize(
    "call",
    [
        pytest.param({"writeKey": "test-write-key", "anonymousId": "\udfff", "event": "E"}, id="value"),
        pytest.param({"writeKey": "test-write-key", "anonymousId": "a", "event": "\ud800"}, id="event"),
        pytest.param({"writeKey": "test-write-key", "anonymousId": "a", "event": "E", "properties": {"\ud800": 1}}, id="name"),
    ],
)
def test_a_lone_surrogate_in_segment_data_is_a_400_not_a_503(segment, call):
    """JSON may carry "\\ud800"; no destination can encode it. Every delivery failed, the
    spool too, and the client was told 503 (retry), forever."""
    client, events = segment
    response = client.get(f"{SEGMENT}/track?{urlencode({'data': segment_data(call)})}", status=400)
    assert response.text.startswith("data: ") and "surrogate" in response.text
    assert events == []


def test_segment_data_counts_array_values_against_max_params(segment):
    """The query form counts each value of properties.t[] as a parameter; data= must too."""
    client, events = segment
    call = {"writeKey": "test-write-key", "anonymousId": "a", "event": "E", "properties": {"t": [1] * 2_000}}
    response = client.get(f"{SEGMENT}/track?{urlencode({'data': segment_data(call)})}", status=400)
    assert response.text.startswith("too many parameters: 2003, the limit is 1000")
    assert events == []


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("99999999999999999999999", MAX_RETRY_AFTER, id="huge-seconds"),
        pytest.param("9" * 400, MAX_RETRY_AFTER, id="beyond-float"),
        pytest.param("Wed, 21 Oct 2999 07:28:00 GMT", MAX_RETRY_AFTER, id="far-date"),
        pytest.param("120", 120.0, id="ordinary"),
        pytest.param("１２", None, id="fullwidth-digits"),
    ],
)
def test_retry_after_is_capped(header, expected):
    assert parse_retry_after(header) == expected


def test_a_century_of_retry_after_does_not_park_a_spooled_event(tmp_path):
    with Sink() as sink:
        sink.default = Reply(503, headers={"Retry-After": "99999999999999999999999"})
        app = PixelApp(delivery_config(tmp_path, {"hook": {"type": "webhook", "url": sink.url, "retries": 0}}, budget=1.0))
        try:
            TestApp(app).get(track_url("m-century"), status=200)
            (row,) = app.spool.all()
            assert row.next_attempt_at is not None
            assert row.next_attempt_at - time.time() <= MAX_RETRY_AFTER + 1
        finally:
            app.close()


@pytest.mark.parametrize("expires", ["9" * 5000, "9" * 13])
def test_an_overlong_exp_is_a_400_not_a_500(expires):
    """int() of 5,000 digits raised ValueError (Python's 4,300-digit limit): a 500."""
    app, events = memory_app(signing_secrets=[SECRET], require_signature=True)
    pairs = [("writeKey", "test-write-key"), ("anonymousId", "a"), ("event", "E"), ("exp", expires)]
    query = urlencode([*pairs, ("sig", sign(pairs, SECRET))])
    try:
        response = TestApp(app).get(f"/pixel/v1/track?{query}", status=400)
        assert response.text == "exp: must be a time in Unix seconds"
        assert events == []
    finally:
        app.close()


@pytest.mark.parametrize("value", ["%EF%BC%91", "%D9%A3", "1%EF%BC%90"])
def test_non_ascii_digits_are_not_numbers(value):
    """A fullwidth "１" was stored as the number 1: \\d matches every Unicode digit."""
    app, events = memory_app()
    try:
        response = TestApp(app).get(f"/pixel/v1/track?writeKey=test-write-key&anonymousId=a&event=E&properties.revenue={value}", status=400)
        assert response.text.startswith("properties.revenue: ")
        assert events == []
    finally:
        app.close()


def test_one_run_reports_the_spool_folder_beside_another_spool_mistake(tmp_path):
    config = textwrap.dedent(
        f"""
        [spool]
        path = "{tmp_path}/nonexistent/spool.sqlite3"
        max_bytes = 1000
        [[sources]]
        name = "s"
        write_key = "k"
        require_signature = "yes"
        [[fetchers]]
        name = "f"
        user_agent = "("
        [destinations.m]
        type = "memory"
        """
    )
    path = tmp_path / "pixel.toml"
    path.write_text(config)
    with pytest.raises(ConfigError) as raised:
        PixelApp(str(path))
    assert sorted(raised.value.errors) == [
        "fetchers[0].user_agent: not a regular expression (missing ), unterminated subpattern at position 0)",
        "sources[0].require_signature: must be true or false, not str",
        "spool.max_bytes: must be at least 1048576",
        f"spool.path: the folder {tmp_path}/nonexistent does not exist",
    ]


def test_the_failure_warning_says_when_the_spool_did_not_keep_the_event(tmp_path, caplog):
    """It said "spooled" before the spool write, which then failed: an operator reading
    the WARNINGs believed the event was kept."""
    with Sink() as sink:
        sink.default = Reply(500)
        app = PixelApp(delivery_config(tmp_path, {"hook": {"type": "webhook", "url": sink.url, "retries": 0}}, budget=1.0))
        try:
            spool_folder = tmp_path / "gone"
            spool_folder.mkdir()
            app.spool.path = str(spool_folder / "spool.sqlite3")
            spool_folder.rmdir()  # the spool cannot be created any more
            with caplog.at_level(logging.WARNING, logger="pixel_wsgi"):
                TestApp(app).get(track_url("m-unkept"), status=503)
            [warning] = [
                record.getMessage()
                for record in caplog.records
                if record.levelno == logging.WARNING and "delivery to" in record.getMessage()
            ]
            assert warning.endswith("NOT spooled: the spool failed")
        finally:
            app.close()


def test_a_store_or_dedupe_file_that_is_not_sqlite_is_a_start_up_error(tmp_path):
    """Found by a fresh-eyes attack: a store path naming a log file was accepted, and then
    every event was tried three times and spooled; a dedupe file of another kind gave a
    traceback on every request. An empty file is fine (it is set up on first use)."""
    log = tmp_path / "access.log"
    log.write_text("127.0.0.1 - - GET /\n")
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    config = textwrap.dedent(
        f"""
        [dedupe]
        path = "{log}"
        [[sources]]
        name = "s"
        write_key = "k"
        dedupe_window = 60
        [destinations.store]
        type = "sqlite"
        path = "{log}"
        [destinations.fresh]
        type = "sqlite"
        path = "{empty}"
        """
    )
    path = tmp_path / "pixel.toml"
    path.write_text(config)
    with pytest.raises(ConfigError) as raised:
        PixelApp(str(path))
    assert sorted(raised.value.errors) == [
        f"dedupe.path: {log} is not a SQLite database",
        f"destinations.store.path: {log} is not a SQLite database",
    ]
