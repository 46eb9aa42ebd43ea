"""``PixelApp.observe``: what an observer is told, and that a failing one costs nothing."""

from __future__ import annotations

import logging

from webtest import TestApp

from pixel_wsgi.observer import Observer
from pixel_wsgi.testing import memory_app

WRITE_KEY = "observer-key"


class Recorder(Observer):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def accepted(self, endpoint, source, event, ignored):
        self.calls.append(("accepted", endpoint, source, event["event"], list(ignored)))

    def rejected(self, endpoint, status, reason, source, query):
        self.calls.append(("rejected", endpoint, status, reason, source))

    def delivery(self, destination, outcome, seconds, breaker_open):
        self.calls.append(("delivery", destination, outcome, breaker_open))


class Broken(Observer):
    def accepted(self, *args):
        raise RuntimeError("observer bug")

    def rejected(self, *args):
        raise RuntimeError("observer bug")

    def delivery(self, *args):
        raise RuntimeError("observer bug")


def test_an_observer_hears_of_events_refusals_and_deliveries():
    app, events = memory_app(WRITE_KEY)
    recorder = Recorder()
    app.observe(recorder)
    client = TestApp(app)
    client.get(f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=a&event=E&cb=1&propertes.x=1&integrations.All=false")
    client.get(f"/pixel/v1/page?writeKey={WRITE_KEY}", status=400)
    client.put("/pixel/v1/track", status=405)
    app.close()
    assert recorder.calls == [
        ("delivery", "memory", "delivered", False),
        ("accepted", "track", "test", "E", ["cb", "propertes.x", "integrations.All"]),
        ("rejected", "page", 400, "anonymousId or userId is required (at least one, not empty)", "test"),
        ("rejected", "track", 405, "method PUT not allowed", None),
    ]


def test_unknown_parameters_kept_by_the_source_are_not_called_ignored():
    app, _ = memory_app(WRITE_KEY)
    source = app.config.sources[0]
    grouped = {"writeKey": [WRITE_KEY], "event": ["E"], "cb": ["1"], "type": ["page"]}
    assert app.ignored_parameters("track", grouped, source) == ["cb", "type"]
    kept = type(source)(**{**source.__dict__, "unknown_params": "keep"})
    assert app.ignored_parameters("track", grouped, kept) == ["type"]
    app.close()


def test_a_failing_observer_is_logged_and_the_client_still_gets_its_answer(caplog):
    app, events = memory_app(WRITE_KEY)
    recorder = Recorder()
    app.observe(Broken())
    app.observe(recorder)
    client = TestApp(app)
    with caplog.at_level(logging.ERROR):
        response = client.get(f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=a&event=E")
        client.get(f"/pixel/v1/track?writeKey={WRITE_KEY}", status=400)
    app.close()
    assert response.content_type == "image/gif" and len(events) == 1
    assert [call[0] for call in recorder.calls] == ["delivery", "accepted", "rejected"]  # the others still heard
    assert sum("observer" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records) == 3


def test_a_single_failing_observer_is_contained_too(caplog):
    app, events = memory_app(WRITE_KEY)
    app.observe(Broken())
    client = TestApp(app)
    with caplog.at_level(logging.ERROR):
        response = client.get(f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=a&event=E")
        client.get(f"/pixel/v1/track?writeKey={WRITE_KEY}", status=400)
    app.close()
    assert response.status_int == 200 and response.content_type == "image/gif" and len(events) == 1
    assert sum("observer failed" in r.getMessage() for r in caplog.records) == 3
