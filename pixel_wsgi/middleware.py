"""``PixelMiddleware``: add the pixel endpoints to an existing WSGI site.

Use it when the site is already a WSGI app (Pyramid's ``config.make_wsgi_app()``,
``bottle.default_app()``, Flask's ``app.wsgi_app``, Django's ``get_wsgi_application()``)
and the pixel should live on the same host and port. Only the pixel app's own paths
are answered (``{prefix}/page``, ``{prefix}/track``, ``{prefix}/click``,
``{segment_prefix}/page|track`` when set, ``{prefix}/health`` and the ``[metrics] path``
when set); every other request reaches the wrapped app untouched: the same environ, the
same ``start_response``, and its body iterable returned as it is, so streaming and
``close()`` work as before.

To put the pixel under its own path prefix instead, mount a ``PixelApp`` with
werkzeug's ``DispatcherMiddleware``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .app import PixelApp
from .config import Config

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class PixelMiddleware:
    def __init__(
        self,
        app: WSGIApplication,
        config: PixelApp | Config | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    ) -> None:
        self.app = app
        self.pixel_app = config if isinstance(config, PixelApp) else PixelApp(config)
        # The pixels and the operations endpoints (health, metrics).
        self.pixel_paths = self.pixel_app.owned_paths

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in self.pixel_paths:
            return self.pixel_app(environ, start_response)
        return self.app(environ, start_response)
