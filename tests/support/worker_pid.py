"""``create_app()`` for gunicorn that says which worker process answered (``X-Worker-Pid``).

Tests that must prove something happens *across* worker processes use it to know that
two requests really were served by two processes.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from pixel_wsgi import create_app as create_pixel_app


def create_app() -> Callable[..., Iterable[bytes]]:
    pixel = create_pixel_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def with_pid(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

        return pixel(environ, with_pid)

    return app
