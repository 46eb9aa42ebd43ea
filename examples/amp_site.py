"""Serve ``amp.html`` with the pixel on the same origin, for trying AMP locally.

The page's ``amp-analytics`` uses the ``rudderstack`` vendor; this server rewrites its
``dataPlaneUrl`` to its own address so that the vendor's requests come back here. Run
it from the repository root and open http://localhost:8000/ in a browser (AMP's
runtime loads from cdn.ampproject.org)::

    PIXEL_WSGI_CONFIG=examples/dev.toml python examples/amp_site.py 8000
    pixel-wsgi events        # a "page" named "AMP article"; click Subscribe for a "track"

The request the vendor makes, without a browser::

    curl -sS -D - -o /dev/null 'http://localhost:8000/pixel/v1/page?writeKey=dev-write-key&anonymousId=amp-1&name=AMP%20article&context.platform=AMP&context.screen.width=412'
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from werkzeug.wrappers import Request, Response

from pixel_wsgi import PixelApp, PixelMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

PAGE = Path(__file__).with_name("amp.html")
PRODUCTION_ORIGIN = "https://pixel.example.com"


def amp_page(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    request = Request(environ)
    if request.path != "/":
        return Response("not found\n", status=404)(environ, start_response)
    html = PAGE.read_text(encoding="utf-8").replace(PRODUCTION_ORIGIN, request.host_url.rstrip("/"))
    return Response(html, content_type="text/html; charset=utf-8")(environ, start_response)


def create_app(pixel_config: PixelApp | Mapping[str, Any] | str | None = None) -> WSGIApplication:
    """The page and the pixel; ``None`` reads ``$PIXEL_WSGI_CONFIG``."""
    return PixelMiddleware(amp_page, pixel_config)


if __name__ == "__main__":
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8000, create_app(), threaded=True)
