"""Calling a WSGI app with a raw environ, as a server would (PEP 3333), through wsgiref's validator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple
from wsgiref.validate import validator


@dataclass
class RawResponse:
    status: int
    header_list: List[Tuple[str, str]]
    body: bytes
    headers: Dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.headers = dict(self.header_list)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


class _EmptyInput:
    def read(self, *args: Any) -> bytes:
        return b""

    def readline(self, *args: Any) -> bytes:
        return b""

    def readlines(self, *args: Any) -> List[bytes]:
        return []

    def __iter__(self) -> Any:
        return iter(())


class _NoErrors:
    """``wsgi.errors`` that fails the test when written to: the app logs through ``logging``."""

    def write(self, text: str) -> None:
        raise AssertionError(f"wrote to wsgi.errors: {text!r}")

    def writelines(self, lines: Any) -> None:
        raise AssertionError(f"wrote to wsgi.errors: {lines!r}")

    def flush(self) -> None:
        pass


def call_wsgi(app: Any, path: str, raw_query: bytes = b"", method: str = "GET", **extra: str) -> RawResponse:
    """One request; ``raw_query`` is the request's bytes, handed over decoded as latin-1."""
    environ: Dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": raw_query.decode("latin-1"),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "192.0.2.10",
        "HTTP_USER_AGENT": "pixel-wsgi tests",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": _EmptyInput(),
        "wsgi.errors": _NoErrors(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        **extra,
    }
    captured: Dict[str, Any] = {}

    def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"] = int(status.split()[0])
        captured["headers"] = list(headers)
        return lambda data: None

    iterable = validator(app)(environ, start_response)
    try:
        body = b"".join(iterable)
    finally:
        iterable.close()
    return RawResponse(captured["status"], captured["headers"], body)
