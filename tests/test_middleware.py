"""PixelMiddleware over a legacy WSGI app, and PixelApp mounted under a SCRIPT_NAME."""

from __future__ import annotations

import pytest
from webtest import TestApp
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from pixel_wsgi import PixelApp, PixelMiddleware
from pixel_wsgi.testing import memory_app, memory_config
from tests.conftest import WRITE_KEY

PIXEL = f"writeKey={WRITE_KEY}&anonymousId=a&event=E"


class StreamedBody:
    """A body iterable that records being consumed and closed, as a WSGI server would."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.closed = False

    def __iter__(self):
        yield from self.chunks

    def close(self):
        self.closed = True


class LegacyApp:
    """Echoes what reached it: method, path, script name, body, a header; streams its reply."""

    def __init__(self):
        self.seen = []
        self.bodies = []

    def __call__(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        posted = environ["wsgi.input"].read(length) if length else b""
        self.seen.append(
            (environ["REQUEST_METHOD"], environ.get("SCRIPT_NAME", ""), environ["PATH_INFO"], posted, environ.get("HTTP_X_LEGACY"))
        )
        start_response("201 Created", [("Content-Type", "text/plain"), ("X-Legacy", "yes")])
        body = StreamedBody([b"chunk-1;", b"chunk-2;", posted])
        self.bodies.append(body)
        return body


@pytest.fixture
def legacy():
    return LegacyApp()


@pytest.fixture
def wrapped(legacy):
    pixel, events = memory_app(WRITE_KEY)
    return TestApp(PixelMiddleware(legacy, pixel)), events


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", "/", b"", id="root"),
        pytest.param("GET", "/pixel/v1/identify", b"", id="other-pixel-like-path"),
        pytest.param("GET", "/pixel/v1/page/", b"", id="trailing-slash"),
        pytest.param("POST", "/login", b"user=alice&password=x", id="post-body"),
        pytest.param("PUT", "/api/items/1", b'{"a": 1}', id="put-body"),
    ],
)
def test_other_requests_reach_the_legacy_app_untouched(wrapped, legacy, method, path, body):
    client, events = wrapped
    response = client.request(path, method=method, body=body, headers={"X-Legacy": "1"}, status=201)
    assert response.body == b"chunk-1;chunk-2;" + body
    assert response.headers["X-Legacy"] == "yes"
    assert legacy.seen == [(method, "", path, body, "1")]
    assert legacy.bodies[0].closed, "the wrapped app's iterable must be closed by the server"
    assert events == []


def test_body_iterable_is_passed_through_as_is(legacy):
    middleware = PixelMiddleware(legacy, memory_config(WRITE_KEY))
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/stream", "wsgi.input": None}
    result = middleware(environ, lambda status, headers: None)
    assert result is legacy.bodies[0]


@pytest.mark.parametrize("path", ["/pixel/v1/page", "/pixel/v1/track"])
def test_pixel_paths_are_answered_by_the_pixel(wrapped, legacy, path):
    client, events = wrapped
    response = client.get(f"{path}?{PIXEL}")
    assert response.content_type == "image/gif"
    assert legacy.seen == []
    assert events[0]["type"] == path.rsplit("/", 1)[1]


def test_pixel_errors_and_methods_stay_with_the_pixel(wrapped, legacy):
    client, _ = wrapped
    client.get("/pixel/v1/track?anonymousId=a", status=400)
    client.post("/pixel/v1/track", status=405)
    assert legacy.seen == []


def test_middleware_accepts_a_config_dict(legacy):
    middleware = PixelMiddleware(legacy, memory_config(WRITE_KEY, prefix="/px"))
    client = TestApp(middleware)
    client.get(f"/px/page?{PIXEL}", status=200)
    client.get(f"/pixel/v1/page?{PIXEL}", status=201)
    assert middleware.pixel_app.destination("memory").events[0]["type"] == "page"


def test_mounted_under_a_script_name_with_dispatcher_middleware(legacy):
    pixel, events = memory_app(WRITE_KEY)
    site = DispatcherMiddleware(legacy, {"/collect": pixel})
    client = TestApp(site)
    response = client.get(f"/collect/pixel/v1/page?{PIXEL}")
    assert response.content_type == "image/gif"
    assert events[0]["type"] == "page"
    client.get(f"/pixel/v1/page?{PIXEL}", status=201)  # outside the mount: the legacy app
    assert legacy.seen[0][2] == "/pixel/v1/page"


def test_script_name_does_not_matter(pixel):
    app, events = pixel
    client = TestApp(app, extra_environ={"SCRIPT_NAME": "/deep/mount"})
    client.get(f"/deep/mount/pixel/v1/track?{PIXEL}")
    assert len(events) == 1


def test_pixel_app_instance_is_shared(legacy):
    pixel = PixelApp(memory_config(WRITE_KEY))
    assert PixelMiddleware(legacy, pixel).pixel_app is pixel
