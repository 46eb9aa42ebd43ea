"""A legacy WSGI site with the pixel app mounted beside it, served by gunicorn.

werkzeug's ``DispatcherMiddleware`` sends ``/analytics/...`` to a ``PixelApp`` (which
sees ``SCRIPT_NAME=/analytics`` and ``PATH_INFO=/pixel/v1/track``) and everything else
to the site, which never knows the pixel is there. Run it from the repository root::

    PIXEL_WSGI_CONFIG=examples/dev.toml gunicorn --pythonpath examples \\
        --workers 2 --threads 4 --limit-request-line 0 --bind 127.0.0.1:8000 'legacy_site:create_app()'

Then try::

    curl http://127.0.0.1:8000/
    curl -sS -D - -o /dev/null 'http://127.0.0.1:8000/analytics/pixel/v1/track?writeKey=dev-write-key&anonymousId=a1&event=Clicked'
    pixel-wsgi events
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from werkzeug.middleware.dispatcher import DispatcherMiddleware

from pixel_wsgi import PixelApp

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

PIXEL_MOUNT = "/analytics"


def legacy_site(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The site as it was: plain WSGI, a home page and a 404 for everything else."""
    path = environ.get("PATH_INFO") or "/"
    if path == "/":
        pixel = f"{PIXEL_MOUNT}/pixel/v1/page?writeKey=dev-write-key&anonymousId=reader-1&name=Home"
        body = f'<!doctype html><title>Legacy</title><h1>The legacy site</h1><img src="{html.escape(pixel)}" alt="">'
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [body.encode("utf-8")]
    start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
    return [f"legacy site: no page at {path}".encode()]


def create_site() -> WSGIApplication:
    return legacy_site


def create_app(pixel_config: PixelApp | Mapping[str, Any] | str | None = None) -> WSGIApplication:
    """The site with the pixel under ``/analytics``; ``None`` reads ``$PIXEL_WSGI_CONFIG``."""
    pixel = pixel_config if isinstance(pixel_config, PixelApp) else PixelApp(pixel_config)
    return DispatcherMiddleware(create_site(), {PIXEL_MOUNT: pixel})
