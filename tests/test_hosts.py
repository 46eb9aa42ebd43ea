"""The same pixel behaviour on every host, and every other request untouched.

Hosts: the bare ``PixelApp``; ``PixelMiddleware`` over a plain WSGI site; the same
site with the pixel mounted by werkzeug's ``DispatcherMiddleware``; a Pyramid site and
a Bottle site wrapped by ``PixelMiddleware``. Each host comes from an example's own
``create_app()``, so the examples are what is tested. One fixture supplies them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
from webtest import TestApp

from pixel_wsgi import PixelApp, PixelMiddleware, pixel_url
from pixel_wsgi.responses import TRANSPARENT_GIF
from pixel_wsgi.testing import memory_app

from .conftest import WRITE_KEY
from .support.examples import load_example


@dataclass
class Host:
    client: TestApp
    events: list[dict[str, Any]]
    pixel: str  # the path the pixel endpoints live under on this host
    site: TestApp | None  # the host without the pixel, to compare pass-through answers
    mount: str = ""  # a DispatcherMiddleware mount point: every path under it is the pixel's


MOUNT = "/analytics"


def _bare(pixel: PixelApp) -> tuple[Any, Any, str]:
    return pixel, None, "/pixel/v1"


def _legacy_middleware(pixel: PixelApp) -> tuple[Any, Any, str]:
    site = load_example("legacy_site").create_site()
    return PixelMiddleware(site, pixel), site, "/pixel/v1"


def _legacy_mounted(pixel: PixelApp) -> tuple[Any, Any, str]:
    example = load_example("legacy_site")
    assert example.PIXEL_MOUNT == MOUNT
    return example.create_app(pixel), example.create_site(), MOUNT + "/pixel/v1"


def _framework(name: str) -> Callable[[PixelApp], tuple[Any, Any, str]]:
    def build(pixel: PixelApp) -> tuple[Any, Any, str]:
        example = load_example(name)
        return example.create_app(pixel), example.create_site(), "/pixel/v1"

    return build


HOSTS = {
    "bare": _bare,
    "legacy-middleware": _legacy_middleware,
    "legacy-mounted": _legacy_mounted,
    "pyramid": _framework("pyramid_site"),
    "bottle": _framework("bottle_site"),
}
SITES = [name for name in HOSTS if name != "bare"]


def _host(name: str) -> Any:
    pixel, events = memory_app(WRITE_KEY)
    app, site, prefix = HOSTS[name](pixel)
    mount = MOUNT if prefix.startswith(MOUNT) else ""
    yield Host(TestApp(app), events, prefix, TestApp(site) if site is not None else None, mount)
    pixel.close()


@pytest.fixture(params=list(HOSTS))
def host(request):
    yield from _host(request.param)


@pytest.fixture(params=SITES)
def site_host(request):
    yield from _host(request.param)


# -- the pixel, the same on every host ------------------------------------------


def test_page(host):
    response = host.client.get(f"{host.pixel}/page?writeKey={WRITE_KEY}&anonymousId=a1&name=Docs&context.page.path=/docs")
    assert response.body == TRANSPARENT_GIF
    assert response.headers["Content-Type"] == "image/gif"
    assert response.headers["Cache-Control"] == "no-store, no-cache, must-revalidate, max-age=0"
    [event] = host.events
    assert (event["type"], event["name"], event["properties"]["path"]) == ("page", "Docs", "/docs")


def test_track(host):
    host.client.get(f"{host.pixel}/track?writeKey={WRITE_KEY}&userId=u1&event=Signed+Up&properties.revenue=5")
    [event] = host.events
    assert (event["type"], event["event"], event["properties"]) == ("track", "Signed Up", {"revenue": 5})


def test_head_answers_without_an_event(host):
    response = host.client.head(f"{host.pixel}/track?writeKey={WRITE_KEY}&userId=u1&event=Prefetched")
    assert (response.status_int, response.body, response.headers["Content-Type"]) == (200, b"", "image/gif")
    assert host.events == []


def test_other_methods_are_405(host):
    response = host.client.post(f"{host.pixel}/page", status=405)
    assert response.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        pytest.param("anonymousId=a1", 400, "writeKey: required", id="no-write-key"),
        pytest.param(f"writeKey={WRITE_KEY}&event=x", 400, "anonymousId or userId", id="no-identity"),
        pytest.param("writeKey=nope&anonymousId=a1&event=x", 401, "invalid write key", id="bad-write-key"),
    ],
)
def test_errors(host, query, status, text):
    response = host.client.get(f"{host.pixel}/track?{query}", status=status)
    assert text in response.text
    assert host.events == []


def test_pixel_url_through_the_host(host):
    url = pixel_url(
        "http://localhost" + host.pixel, WRITE_KEY, "track", event="Order Completed", user_id="u1",
        properties={"products": [{"sku": "A", "price": "1"}], "tags": ["x", "y"], "total": 9.5},
    )  # fmt: skip
    host.client.get(url)
    assert host.events[0]["properties"] == {"products": [{"sku": "A", "price": "1"}], "tags": ["x", "y"], "total": 9.5}


# -- everything else reaches the host untouched -----------------------------------


def _passes_through(site_host: Host, method: str, path: str) -> None:
    wrapped = getattr(site_host.client, method)(path, expect_errors=True)
    direct = getattr(site_host.site, method)(path, expect_errors=True)
    assert (wrapped.status, wrapped.headers.get("Content-Type"), wrapped.body) == (
        direct.status,
        direct.headers.get("Content-Type"),
        direct.body,
    )
    assert site_host.events == []


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/", id="home"),
        pytest.param("/hello/ada?writeKey=test-write-key&x=1", id="page-with-query"),
        pytest.param("/nowhere", id="host-404"),
        pytest.param("{pixel}s", id="near-miss-suffix"),
        pytest.param("{pixel}/page/", id="trailing-slash"),
        pytest.param("{pixel}/Page", id="case"),
        pytest.param("{pixel}", id="prefix-only"),
        pytest.param("/pixel/v1/identify", id="other-endpoint"),
    ],
)
def test_other_paths_reach_the_host(site_host, path):
    path = path.format(pixel=site_host.pixel)
    if site_host.mount and path.startswith(site_host.mount):
        # DispatcherMiddleware gives the whole mount to the pixel app: its own 404.
        assert site_host.client.get(path, status=404).text == "not found"
        return
    _passes_through(site_host, "get", path)


def test_other_methods_on_other_paths_reach_the_host(site_host):
    _passes_through(site_host, "post", "/")
