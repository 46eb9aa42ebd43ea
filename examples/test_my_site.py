"""Testing your own site's pixel: WebTest and the ``memory`` destination, no server.

Your site's factory takes the pixel's configuration (here the Bottle example's
``create_app``); the test hands it a ``PixelApp`` whose events land in a Python list.
Run it from the repository root::

    pytest examples/test_my_site.py
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from bottle_site import create_app  # your site's factory
from webtest import TestApp

from pixel_wsgi import PixelApp, pixel_url
from pixel_wsgi.testing import memory_app

WRITE_KEY = "test-write-key"


@pytest.fixture
def pixel() -> Iterator[tuple[PixelApp, list[dict[str, Any]]]]:
    app, events = memory_app(WRITE_KEY)
    yield app, events
    app.close()


@pytest.fixture
def site(pixel: tuple[PixelApp, list[dict[str, Any]]]) -> TestApp:
    return TestApp(create_app(pixel[0]))


@pytest.fixture
def events(pixel: tuple[PixelApp, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return pixel[1]


def test_signup_pixel_records_the_event(site: TestApp, events: list[dict[str, Any]]) -> None:
    url = pixel_url("http://localhost/pixel/v1", WRITE_KEY, "track", event="Signed Up", user_id="u-1", properties={"plan": "pro"})
    response = site.get(url)
    assert response.content_type == "image/gif"
    [event] = events
    assert (event["event"], event["userId"], event["properties"]) == ("Signed Up", "u-1", {"plan": "pro"})


def test_a_broken_pixel_is_a_400_naming_the_parameter(site: TestApp, events: list[dict[str, Any]]) -> None:
    response = site.get(f"/pixel/v1/track?writeKey={WRITE_KEY}&userId=u-1&properties.revenue=lots&event=Paid", status=400)
    assert response.text.startswith("properties.revenue: must be a number")
    assert events == []


def test_the_site_itself_is_untouched(site: TestApp, events: list[dict[str, Any]]) -> None:
    assert site.get("/hello/ada").text == "Hello, ada!\n"
    assert events == []
