"""The endpoints and the responses table (README, "Responses"): one case per row, and the headers of every answer."""

from __future__ import annotations

import logging

import pytest
from webtest import TestApp

from pixel_wsgi import PixelApp
from pixel_wsgi.responses import TRANSPARENT_GIF
from pixel_wsgi.testing import memory_app, memory_config
from tests.conftest import WRITE_KEY

VALID = f"writeKey={WRITE_KEY}&anonymousId=a&event=E"
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
    "X-Content-Type-Options": "nosniff",
    "Access-Control-Allow-Origin": "*",
}


def assert_pixel_headers(response):
    for name, value in NO_CACHE.items():
        assert response.headers[name] == value, name


@pytest.mark.parametrize(
    ("url", "status", "content_type", "body"),
    [
        pytest.param(f"/pixel/v1/track?{VALID}", 200, "image/gif", TRANSPARENT_GIF, id="accepted-track"),
        pytest.param(f"/pixel/v1/page?{VALID}", 200, "image/gif", TRANSPARENT_GIF, id="accepted-page"),
        pytest.param("/pixel/v1/track?anonymousId=a&event=E", 400, "text/plain", b"writeKey: required", id="missing-parameter"),
        pytest.param(
            f"/pixel/v1/track?{VALID}&properties.revenue=x",
            400,
            "text/plain",
            b"properties.revenue: must be a number, not 'x'",
            id="invalid-parameter",
        ),
        pytest.param(
            "/pixel/v1/track?writeKey=nope&anonymousId=a&event=E", 401, "text/plain", b"invalid write key", id="unknown-write-key"
        ),
        pytest.param(
            "/pixel/v1/track?writeKey=off-key&anonymousId=a&event=E", 404, "text/plain", b"source is disabled", id="disabled-source"
        ),
        pytest.param(
            f"/pixel/v1/track?{VALID}&properties.pad={'x' * 33000}",
            414,
            "text/plain",
            b"query string longer than the limit of 32768 bytes",
            id="query-too-long",
        ),
    ],
)
def test_response_table(url, status, content_type, body):
    config = memory_config(WRITE_KEY)
    config["sources"].append({"name": "off", "write_key": "off-key", "enabled": False})
    app = PixelApp(config)
    response = TestApp(app).get(url, status=status)
    assert response.content_type == content_type
    assert response.body == body
    assert response.headers["Content-Length"] == str(len(body))
    assert_pixel_headers(response)
    assert len(app.destination("memory").events) == (1 if status == 200 else 0)


def test_gif_is_43_bytes_and_a_gif(client):
    response = client.get(f"/pixel/v1/page?{VALID}")
    assert len(response.body) == 43
    assert response.body.startswith(b"GIF89a\x01\x00\x01\x00")


def test_response_body_ok():
    app, _ = memory_app(WRITE_KEY, response_body="ok")
    response = TestApp(app).get(f"/pixel/v1/track?{VALID}")
    assert response.content_type == "text/plain"
    assert response.body == b"OK"
    assert_pixel_headers(response)


@pytest.mark.parametrize("path", ["/pixel/v1/page", "/pixel/v1/track"])
def test_head_answers_like_success_without_an_event(client, events, path):
    get = client.get(f"{path}?{VALID}")
    head = client.head(f"{path}?{VALID}")
    assert head.status_int == 200
    assert head.body == b""
    assert head.headers == get.headers
    assert len(events) == 1  # only the GET


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", ["/pixel/v1/page", "/pixel/v1/track"])
def test_other_methods_are_405(client, events, method, path):
    response = client.request(f"{path}?{VALID}", method=method, status=405)
    assert response.headers["Allow"] == "GET, HEAD"
    assert response.content_type == "text/plain"
    assert_pixel_headers(response)
    assert events == []


def test_unknown_path_is_404(client):
    response = client.get("/pixel/v1/identify", status=404)
    assert response.content_type == "text/plain"


@pytest.mark.parametrize("path", ["/pixel/v1/page/", "/pixel/v1/Page", "/pixel/v1//page"])
def test_near_miss_paths_are_404_not_redirects(pixel, path):
    app, events = pixel
    statuses = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": VALID, "SERVER_NAME": "x", "SERVER_PORT": "80"}
    body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["404 Not Found"]
    assert body == b"not found"
    assert events == []


def test_errors_as_pixel_answers_errors_with_a_gif(caplog):
    app, events = memory_app(WRITE_KEY, errors_as_pixel=True)
    with caplog.at_level(logging.INFO, logger="pixel_wsgi"):
        response = TestApp(app).get(f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=a", status=200)
    assert response.body == TRANSPARENT_GIF
    assert response.headers["X-Pixel-Error"] == "event: required"
    assert_pixel_headers(response)
    assert events == []
    assert "rejected 400 /pixel/v1/track: event: required (source test" in caplog.text


def test_errors_as_pixel_covers_a_too_long_query():
    app, _ = memory_app(WRITE_KEY, errors_as_pixel=True)
    response = TestApp(app).get(f"/pixel/v1/track?writeKey={WRITE_KEY}&x={'y' * 40000}", status=200)
    assert response.headers["X-Pixel-Error"] == "query string longer than the limit of 32768 bytes"


def test_errors_as_pixel_does_not_cover_unknown_write_keys():
    app, _ = memory_app(WRITE_KEY, errors_as_pixel=True)
    TestApp(app).get("/pixel/v1/track?writeKey=other&anonymousId=a&event=E", status=401)


def test_cors_origin_configurable():
    app, _ = memory_app(WRITE_KEY, cors_allow_origin="https://mail.example.com")
    response = TestApp(app).get(f"/pixel/v1/track?{VALID}")
    assert response.headers["Access-Control-Allow-Origin"] == "https://mail.example.com"
    app, _ = memory_app(WRITE_KEY, cors_allow_origin=False)
    assert "Access-Control-Allow-Origin" not in TestApp(app).get(f"/pixel/v1/track?{VALID}").headers


def test_rejections_are_logged_once_with_status_reason_path_and_client(client, caplog):
    with caplog.at_level(logging.INFO, logger="pixel_wsgi"):
        client.get("/pixel/v1/page?writeKey=secretkey123&anonymousId=a", status=401, extra_environ={"REMOTE_ADDR": "198.51.100.7"})
    [record] = [r for r in caplog.records if r.name.startswith("pixel_wsgi")]
    assert record.levelno == logging.INFO
    assert record.getMessage() == "rejected 401 /pixel/v1/page: invalid write key (source unknown, client 198.51.100.7)"
    assert "secretkey123" not in caplog.text


def test_undeliverable_event_is_503_even_with_errors_as_pixel(tmp_path, caplog):
    config = memory_config(WRITE_KEY, errors_as_pixel=True)
    config["destinations"] = {"broken": {"type": "tests.support.destinations:AlwaysFailingDestination"}}
    spool_dir = tmp_path / "spool-dir"
    spool_dir.mkdir()
    config["spool"] = {"path": str(spool_dir / "spool.sqlite3")}
    app = PixelApp(config)
    # A spool that is unusable at start-up is a ConfigError; one that goes
    # away later costs the client a 503.
    spool_dir.rmdir()
    with caplog.at_level(logging.WARNING, logger="pixel_wsgi.app"):
        response = TestApp(app).get(f"/pixel/v1/track?{VALID}", status=503)
    assert response.content_type == "text/plain"
    assert response.text == "the event could not be delivered or stored; try again"
    assert "X-Pixel-Error" not in response.headers
    # The operator sees which source lost the event (it was logged as "source unknown").
    assert "rejected 503 /pixel/v1/track: the event could not be delivered or stored; try again (source test," in caplog.text


def test_a_bug_is_a_500_without_a_traceback(client, pixel, caplog):
    app, _ = pixel

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    app.schemas.load = broken
    with caplog.at_level(logging.ERROR, logger="pixel_wsgi"):
        response = client.get(f"/pixel/v1/track?{VALID}", status=500)
    assert response.text == "internal error"
    assert "Traceback" in caplog.text  # logged for the operator, not shown to the client
