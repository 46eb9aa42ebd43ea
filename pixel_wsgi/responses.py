"""The few responses a pixel endpoint gives, with headers built once per app."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterable, List, Tuple
from urllib.parse import quote

from .config import Config

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse

# The smallest transparent GIF: 1×1, one transparent colour, 43 bytes.
TRANSPARENT_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
# A second open of an email must be a second request, so nothing may cache a pixel.
NO_CACHE_HEADERS = [
    ("Cache-Control", "no-store, no-cache, must-revalidate, max-age=0"),
    ("Pragma", "no-cache"),
    ("Expires", "0"),
    ("X-Content-Type-Options", "nosniff"),
]
STATUS_LINES = {
    200: "200 OK",
    302: "302 Found",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    414: "414 URI Too Long",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}
MAX_ERROR_HEADER_LENGTH = 200

# C0 controls, DEL and the Unicode line breaks (NEL, LINE and PARAGRAPH SEPARATOR).
_UNSAFE_IN_ONE_LINE = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")

Headers = List[Tuple[str, str]]


def _ascii_url(url: str) -> str:
    return url if url.isascii() else _NON_ASCII.sub(lambda match: quote(match.group(0), safe=""), url)


def one_line(text: str) -> str:
    """No CR, LF, Unicode line breaks or other control characters: safe in a header or a body."""
    return _UNSAFE_IN_ONE_LINE.sub(" ", text)


class Responses:
    def __init__(self, config: Config) -> None:
        common = list(NO_CACHE_HEADERS)
        if config.cors_allow_origin:
            common.append(("Access-Control-Allow-Origin", config.cors_allow_origin))
        self.common_headers = common
        if config.response_body == "ok":
            self.success_body = b"OK"
            success_type = "text/plain; charset=utf-8"
        else:
            self.success_body = TRANSPARENT_GIF
            success_type = "image/gif"
        self.success_headers: Headers = [
            ("Content-Type", success_type),
            ("Content-Length", str(len(self.success_body))),
            *common,
        ]

    def success(self, start_response: StartResponse, *, head: bool = False, error: str | None = None) -> Iterable[bytes]:
        headers = list(self.success_headers)
        if error is not None:
            # ASCII only and one line: header injection through a reason is impossible.
            safe = one_line(error).encode("ascii", "backslashreplace").decode("ascii")
            headers.append(("X-Pixel-Error", safe[:MAX_ERROR_HEADER_LENGTH]))
        start_response("200 OK", headers)
        return [] if head else [self.success_body]

    def redirect(self, start_response: StartResponse, location: str, *, error: str | None = None) -> Iterable[bytes]:
        """A ``302`` to ``location`` (already checked by the caller), never cached."""
        # A header value must be Latin-1: non-ASCII characters of the path travel percent-encoded.
        headers = [("Location", _ascii_url(location)), ("Content-Length", "0"), *self.common_headers]
        if error is not None:
            safe = one_line(error).encode("ascii", "backslashreplace").decode("ascii")
            headers.append(("X-Pixel-Error", safe[:MAX_ERROR_HEADER_LENGTH]))
        start_response(STATUS_LINES[302], headers)
        return []

    def error(self, start_response: StartResponse, status: int, reason: str, extra: Headers | None = None) -> Iterable[bytes]:
        body = one_line(reason).encode("utf-8")
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *self.common_headers,
            *(extra or ()),
        ]
        start_response(STATUS_LINES.get(status, f"{status} Error"), headers)
        return [body]
