"""A Bottle site wrapped by ``PixelMiddleware``: the pixel on the site's own host and port.

A ``bottle.Bottle()`` is a WSGI app: wrap it and hand the wrapper to ``bottle.run``
(or to gunicorn). Run it from the repository root::

    PIXEL_WSGI_CONFIG=examples/dev.toml python examples/bottle_site.py 8000

or under gunicorn::

    PIXEL_WSGI_CONFIG=examples/dev.toml gunicorn --pythonpath examples --bind 127.0.0.1:8000 'bottle_site:create_app()'

Then try::

    curl http://127.0.0.1:8000/hello/ada
    curl -sS -D - -o /dev/null 'http://127.0.0.1:8000/pixel/v1/track?writeKey=dev-write-key&userId=u1&event=Signed%20Up'
    pixel-wsgi events
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Mapping

import bottle

from pixel_wsgi import PixelApp, PixelMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


def create_site() -> bottle.Bottle:
    # An app of its own rather than bottle's module-level default_app(): two sites in
    # one process (as in tests) never share routes.
    site = bottle.Bottle()

    @site.route("/")
    def home() -> str:
        bottle.response.content_type = "text/plain; charset=utf-8"
        return "Hello from Bottle\n"

    @site.route("/hello/<name>")
    def hello(name: str) -> str:
        bottle.response.content_type = "text/plain; charset=utf-8"
        return f"Hello, {name}!\n"

    return site


def create_app(pixel_config: PixelApp | Mapping[str, Any] | str | None = None) -> WSGIApplication:
    """The site and the pixel; ``None`` reads ``$PIXEL_WSGI_CONFIG``."""
    return PixelMiddleware(create_site(), pixel_config)


if __name__ == "__main__":
    bottle.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
