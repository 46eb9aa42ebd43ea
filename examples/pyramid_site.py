"""A Pyramid site wrapped by ``PixelMiddleware``: the pixel on the site's own host and port.

``config.make_wsgi_app()`` is a WSGI app like any other: wrap it, and the two pixel
paths are answered before Pyramid's router sees them. Run it from the repository root::

    PIXEL_WSGI_CONFIG=examples/dev.toml python examples/pyramid_site.py 8000

or under gunicorn::

    PIXEL_WSGI_CONFIG=examples/dev.toml gunicorn --pythonpath examples --bind 127.0.0.1:8000 'pyramid_site:create_app()'

Then try::

    curl http://127.0.0.1:8000/hello/ada
    curl -sS -D - -o /dev/null 'http://127.0.0.1:8000/pixel/v1/page?writeKey=dev-write-key&anonymousId=a1&name=Docs'
    pixel-wsgi events
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Mapping

from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response

from pixel_wsgi import PixelApp, PixelMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


def home(request: Request) -> Response:
    return Response("Hello from Pyramid\n", content_type="text/plain")


def hello(request: Request) -> Response:
    return Response(f"Hello, {request.matchdict['name']}!\n", content_type="text/plain")


def create_site() -> WSGIApplication:
    with Configurator() as config:
        config.add_route("home", "/")
        config.add_view(home, route_name="home")
        config.add_route("hello", "/hello/{name}")
        config.add_view(hello, route_name="hello")
        return config.make_wsgi_app()


def create_app(pixel_config: PixelApp | Mapping[str, Any] | str | None = None) -> WSGIApplication:
    """The site and the pixel; ``None`` reads ``$PIXEL_WSGI_CONFIG``."""
    return PixelMiddleware(create_site(), pixel_config)


if __name__ == "__main__":
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8000, create_app(), threaded=True)
