"""Top-level ``errors_as_pixel``: requests whose source cannot be known still show an image."""

from __future__ import annotations

import logging

import pytest
from webtest import TestApp

from pixel_wsgi import PixelApp
from pixel_wsgi.responses import TRANSPARENT_GIF


def build(top_level: bool, source_level: bool = False) -> PixelApp:
    return PixelApp(
        {
            "errors_as_pixel": top_level,
            "sources": [{"name": "strict", "write_key": "strict-key", "errors_as_pixel": source_level}],
            "destinations": {"memory": {"type": "memory"}},
        }
    )


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        pytest.param("anonymousId=a&event=x", "writeKey: required", id="missing"),
        pytest.param("writeKey=&anonymousId=a&event=x", "writeKey: required", id="empty"),
        pytest.param("writeKey=unknown&anonymousId=a&event=x", "invalid write key", id="unknown"),
        pytest.param("writeKey=a&writeKey=b", "writeKey: given more than once", id="twice"),
        pytest.param("writeKey=%ff", "", id="not-utf8"),
    ],
)
def test_an_unknown_source_is_answered_with_the_gif_when_asked(query, reason, caplog):
    caplog.set_level(logging.INFO, logger="pixel_wsgi")
    app = build(top_level=True)
    response = TestApp(app).get("/pixel/v1/track?" + query)
    assert response.body == TRANSPARENT_GIF
    assert response.headers["X-Pixel-Error"].startswith(reason)
    # Every rejection is still logged, whatever the answer looks like.
    assert "rejected" in caplog.text
    assert app.destination("memory").events == []  # type: ignore[attr-defined]


def test_by_default_an_unknown_source_is_an_error():
    response = TestApp(build(top_level=False)).get("/pixel/v1/track?writeKey=unknown&anonymousId=a&event=x", status=401)
    assert response.text == "invalid write key"


def test_a_known_source_decides_for_itself():
    """The top-level switch is only for requests without a known source."""
    response = TestApp(build(top_level=True, source_level=False)).get("/pixel/v1/track?writeKey=strict-key&anonymousId=a", status=400)
    assert response.text.startswith("event")


def test_a_503_is_never_a_pixel(tmp_path):
    """Nothing about the source matters here: a lost event is a 503 whatever the switches say."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    app = PixelApp(
        {
            "errors_as_pixel": True,
            "sources": [{"name": "s", "write_key": "k", "errors_as_pixel": True}],
            "destinations": {"down": {"type": "webhook", "url": "http://127.0.0.1:9/", "timeout": 0.2, "retries": 0}},
            "spool": {"path": str(tmp_path / "spool.sqlite3")},
        }
    )
    app.spool.path = str(blocked / "spool.sqlite3")
    try:
        TestApp(app).get("/pixel/v1/track?writeKey=k&anonymousId=a&event=x", status=503)
    finally:
        app.close()
