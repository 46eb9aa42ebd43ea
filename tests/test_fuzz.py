"""Hypothesis fuzz of the raw query string, straight through the WSGI interface.

The query reaches the app as PEP 3333 says a server hands it over: the request's bytes
decoded as latin-1 in ``QUERY_STRING``. Whatever those bytes are, the answer is one of
the documented statuses with the right content type and headers, and nothing escapes
(no exception, no 500, nothing logged at ERROR).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pixel_wsgi.testing import memory_app
from tests.support.wsgi import call_wsgi

WRITE_KEY = "fuzz-write-key"
DOCUMENTED = {200, 400, 401, 404, 414}
FUZZ_SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_ONE_LINE = re.compile(r"[^\x00-\x1f\x7f]*\Z")


class ErrorLogCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def apps():
    plain, _ = memory_app(WRITE_KEY)
    pixel, _ = memory_app(WRITE_KEY, errors_as_pixel=True, infer_types=True, unknown_params="keep")
    catcher = ErrorLogCatcher()
    logger = logging.getLogger("pixel_wsgi")
    logger.addHandler(catcher)
    yield {"plain": plain, "pixel": pixel}, catcher
    logger.removeHandler(catcher)
    plain.close()
    pixel.close()


def call(app, path: str, raw_query: bytes):
    response = call_wsgi(app, path, raw_query)
    return response.status, response.headers, response.body


def assert_documented(status: int, headers: dict, body: bytes, *, as_pixel: bool) -> None:
    event(f"status {status}")  # --hypothesis-show-statistics shows what the fuzz reached
    assert status in DOCUMENTED, (status, body)
    assert headers["Cache-Control"] == "no-store, no-cache, must-revalidate, max-age=0"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Length"] == str(len(body))
    if status == 200:
        assert headers["Content-Type"] == "image/gif"
        assert body.startswith(b"GIF89a") and len(body) == 43
    else:
        assert not as_pixel, "an errors_as_pixel source answered a 4xx"
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        text = body.decode("utf-8")
        assert text and _ONE_LINE.match(text), text
        assert "Traceback" not in text
    if "X-Pixel-Error" in headers:
        assert as_pixel
        assert re.fullmatch(r"[ -~]{1,200}", headers["X-Pixel-Error"])


# -- strategies -----------------------------------------------------------------------

# The pieces a hostile or broken client puts in a query: structure characters, escapes
# (valid, truncated, of invalid UTF-8), digits for indexes, and long runs of any of them.
_ATOMS = st.one_of(
    st.sampled_from(
        [
            "&",
            "=",
            ".",
            "[",
            "]",
            "[]",
            "+",
            "%",
            "%2",
            "%25",
            "%00",
            "%0d%0a",
            "%ff",
            "%c3",
            "%c3%a9",
            "%e2%82",
            "%ed%a0%80",
            "%5B",
            "%5D",
            "%2E",
            "%26",
            "%3D",
            "properties",
            "context",
            "type",
            "receivedAt",
            "integrations",
            "writeKey",
            "userId",
            "anonymousId",
            "event",
            "name",
            "messageId",
            "timestamp",
            "revenue",
            "quantity",
            "screen",
            "width",
            "0",
            "1",
            "100",
            "101",
            "1000000000",
            "-1",
            "\x00",
            "\t",
            "\x7f",
            "é",
            "\u2028",
            "\x80",
            "\xff",
        ]
    ),
    st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=8),
    st.integers(min_value=0, max_value=10**12).map(str),
)
_RUNS = st.tuples(st.sampled_from([".", "[", "]", "[0]", "a.", "&", "=", "%", "+", "[]"]), st.integers(min_value=1, max_value=400)).map(
    lambda pair: pair[0] * pair[1]
)
# Python refuses to convert integer strings over 4300 digits: numbers around that size.
_DIGIT_RUNS = st.integers(min_value=4000, max_value=6000).map(lambda count: "9" * count)
# Text as UTF-8 on the wire; a few raw bytes that are not UTF-8 at all are mixed in.
_RAW_ATOMS = st.sampled_from([b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xc0\xaf"])
structured_query = st.lists(
    st.one_of(_ATOMS.map(str.encode), _RUNS.map(str.encode), _DIGIT_RUNS.map(str.encode), _RAW_ATOMS), max_size=40
).map(b"".join)
# Well-formed parameters with hostile values: these get past the parser to the schemas.
_NESTED_KEYS = st.tuples(
    st.sampled_from(["properties", "context", "context.screen", "properties.products[0]", "properties.items.0"]),
    st.sampled_from(
        [".revenue", ".quantity", ".price", ".width", ".density", ".n", "[]", ".tags[]", "[0]", ".0", ".page.path", ".ip", ".library.name"]
    ),
).map("".join)
_TOP_LEVEL_KEYS = st.sampled_from(
    [
        "userId",
        "messageId",
        "timestamp",
        "originalTimestamp",
        "sentAt",
        "name",
        "category",
        "channel",
        "type",
        "receivedAt",
        "integrations.All",
        "cb",
    ]
)
_VALUES = st.one_of(
    _ATOMS,
    _DIGIT_RUNS,
    st.from_regex(r"-?\d{1,30}(\.\d{1,30})?([eE][+-]?\d{1,6})?", fullmatch=True),
    st.sampled_from(
        [
            "true",
            "false",
            "null",
            "NaN",
            "Infinity",
            "-0",
            "1e309",
            "0x10",
            "１２",
            '"q"',
            "2024-02-30T12:00:00Z",
            "2024-01-31T24:00:00Z",
            "2024-01-31T12:00:00+99:99",
        ]
    ),
)
parameters = (
    st.lists(st.tuples(st.one_of(_NESTED_KEYS, _TOP_LEVEL_KEYS), _VALUES), max_size=8, unique_by=lambda pair: pair[0])
    .map(lambda pairs: "&".join(f"{key}={quote(value)}" for key, value in pairs))
    .map(str.encode)
)
raw_bytes = st.binary(max_size=2048)
any_query = st.one_of(raw_bytes, structured_query, parameters)
paths = st.sampled_from(["/pixel/v1/page", "/pixel/v1/track"])


def valid_prefix(path: str) -> bytes:
    """A prefix that passes the write key and identity, so the fuzz reaches parser and schema."""
    extra = "&event=Fuzzed" if path.endswith("track") else ""
    return f"writeKey={WRITE_KEY}&anonymousId=fuzzer{extra}&".encode()


# -- the fuzz -------------------------------------------------------------------------


@FUZZ_SETTINGS
@given(path=paths, query=any_query)
def test_raw_query_always_gets_a_documented_answer(apps, path, query):
    app_by_name, catcher = apps
    status, headers, body = call(app_by_name["plain"], path, query)
    assert_documented(status, headers, body, as_pixel=False)
    assert not catcher.records, catcher.records[0].getMessage()


@FUZZ_SETTINGS
@given(path=paths, query=any_query, before=st.booleans())
def test_fuzz_behind_a_valid_write_key_reaches_parser_and_schema(apps, path, query, before):
    app_by_name, catcher = apps
    raw = valid_prefix(path) + query if before else query + b"&" + valid_prefix(path)
    status, headers, body = call(app_by_name["plain"], path, raw)
    assert_documented(status, headers, body, as_pixel=False)
    assert status in {200, 400, 414}
    assert not catcher.records, catcher.records[0].getMessage()


@FUZZ_SETTINGS
@given(path=paths, query=any_query)
def test_fuzz_errors_as_pixel_always_answers_a_gif(apps, path, query):
    app_by_name, catcher = apps
    status, headers, body = call(app_by_name["pixel"], path, valid_prefix(path) + query)
    assert_documented(status, headers, body, as_pixel=True)
    assert status == 200
    assert not catcher.records, catcher.records[0].getMessage()
