"""Hostile input, one row per attack: the exact status and body, and what must not happen.

Requests go through ``tests.support.wsgi.call_wsgi``: a raw PEP 3333 environ (the
query's bytes as latin-1) through wsgiref's validator, so bytes that no test client
would send reach the app as a server would hand them over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict

import pytest

from pixel_wsgi import ConfigError, PixelApp
from pixel_wsgi.responses import TRANSPARENT_GIF
from pixel_wsgi.testing import memory_app, memory_config
from tests.support.wsgi import RawResponse, call_wsgi

KEY = "hostile-write-key"
VALID = f"writeKey={KEY}&anonymousId=a&event=E".encode()
REMOTE = "192.0.2.10"  # REMOTE_ADDR in call_wsgi
BIG_LIMITS = {"max_query_length": 2_000_000, "max_key_length": 100_000}


@dataclass
class Row:
    query: bytes
    status: int
    body: bytes
    options: Dict[str, Any] = field(default_factory=dict)
    environ: Dict[str, str] = field(default_factory=dict)
    # Checks on the stored event (200 rows) or the response (pixel errors).
    check: Callable[[RawResponse, list], None] | None = None
    header_error: str | None = None


def ip_is(expected: str | None) -> Callable[[RawResponse, list], None]:
    def check(response: RawResponse, events: list) -> None:
        (event,) = events
        assert event["context"].get("ip") == expected

    return check


def server_fields_win(response: RawResponse, events: list) -> None:
    (event,) = events
    assert event["type"] == "track"
    assert event["receivedAt"] != "2000-01-01T00:00:00.000Z"
    assert event["integrations"] == {"All": True}
    assert event["context"]["ip"] == REMOTE
    assert "writeKey" not in event
    assert "properties" not in event  # nothing of type/receivedAt/integrations leaked in


OVERRULE = b"&type=identify&receivedAt=2000-01-01T00:00:00.000Z&context.ip=6.6.6.6&integrations.All=false&integrations.Salesforce=true"
CRLF_REVENUE = b"&properties.revenue=1%0d%0aSet-Cookie:%20sid=evil"
CRLF_KEY = b"&properties.a%0d%0aX-Injected:%20yes=1"
DEEP = b"properties" + b".a" * 999
DEEP_BRACKETS = b"properties" + b"[a]" * 999

ROWS = [
    pytest.param(Row(VALID + b"&%ff=1", 400, b"parameter name is not valid UTF-8: '%ff'"), id="invalid-utf8-escaped-key"),
    pytest.param(Row(VALID + b"&properties.a=%c3", 400, b"properties.a: value is not valid UTF-8"), id="invalid-utf8-escaped-value"),
    pytest.param(Row(VALID + b"&properties.a=\xff\xfe", 400, b"properties.a: value is not valid UTF-8"), id="invalid-utf8-raw-value"),
    pytest.param(Row(VALID + b"&properties.a=%ed%a0%80", 400, b"properties.a: value is not valid UTF-8"), id="utf8-surrogate-value"),
    pytest.param(Row(VALID + b"&properties.a=%c0%af", 400, b"properties.a: value is not valid UTF-8"), id="utf8-overlong-value"),
    pytest.param(
        Row(b"&".join([VALID] + [b"p%d=1" % i for i in range(99_997)]), 414, b"query string longer than the limit of 32768 bytes"),
        id="100000-parameters",
    ),
    pytest.param(
        Row(
            b"&".join([VALID] + [b"p%d=1" % i for i in range(99_997)]),
            400,
            b"too many parameters: 100000, the limit is 1000",
            options={"limits": BIG_LIMITS},
        ),
        id="100000-parameters-under-a-raised-length-limit",
    ),
    pytest.param(
        Row(VALID + b"&properties.x=" + b"x" * (1 << 20), 414, b"query string longer than the limit of 32768 bytes"), id="1mb-query"
    ),
    pytest.param(
        Row(
            VALID + b"&" + DEEP + b"=1",
            400,
            b"parameter name longer than the limit of 256 characters: 'properties.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a'\xe2\x80\xa6",
        ),
        id="depth-1000-dots",
    ),
    pytest.param(
        Row(VALID + b"&" + DEEP + b"=1", 400, DEEP + b": nested deeper than the limit of 32 levels", options={"limits": BIG_LIMITS}),
        id="depth-1000-dots-under-a-raised-key-limit",
    ),
    pytest.param(
        Row(
            VALID + b"&" + DEEP_BRACKETS + b"=1",
            400,
            DEEP_BRACKETS + b": nested deeper than the limit of 32 levels",
            options={"limits": BIG_LIMITS},
        ),
        id="depth-1000-brackets-under-a-raised-key-limit",
    ),
    pytest.param(
        Row(
            VALID + b"&properties.items[1000000000].sku=A",
            400,
            b"properties.items[1000000000].sku: array index 1000000000 is over the limit of 100",
        ),
        id="index-10e9-brackets",
    ),
    pytest.param(
        Row(
            VALID + b"&properties.items.1000000000.sku=A",
            400,
            b"properties.items.1000000000.sku: array index 1000000000 is over the limit of 100",
        ),
        id="index-10e9-dots",
    ),
    pytest.param(
        Row(
            VALID + b"&properties.items[" + b"9" * 5000 + b"]=A",
            400,
            b"properties.items[" + b"9" * 5000 + b"]: array index 999999999999 is over the limit of 100",
            options={"limits": BIG_LIMITS},
        ),
        id="index-5000-digits",
    ),
    pytest.param(
        Row(VALID + b"&properties.a%00b=1", 400, b"parameter name with a control character: 'properties.a\\x00b'"), id="nul-escaped-in-key"
    ),
    pytest.param(
        Row(VALID + b"&properties.a\x00b=1", 400, b"parameter name with a control character: 'properties.a\\x00b'"), id="nul-raw-in-key"
    ),
    pytest.param(
        Row(VALID + b"&properties.a%1b[2Jb=1", 400, b"parameter name with a control character: 'properties.a\\x1b[2Jb'"), id="escape-in-key"
    ),
    pytest.param(Row(VALID + b"&properties.a%7f=1", 400, b"parameter name with a control character: 'properties.a\\x7f'"), id="del-in-key"),
    pytest.param(
        Row(
            VALID + CRLF_REVENUE,
            200,
            TRANSPARENT_GIF,
            options={"errors_as_pixel": True},
            header_error="properties.revenue: must be a number, not '1\\r\\nSet-Cookie: sid=evil'",
        ),
        id="crlf-in-value-errors-as-pixel",
    ),
    pytest.param(
        Row(
            VALID + CRLF_KEY,
            200,
            TRANSPARENT_GIF,
            options={"errors_as_pixel": True},
            header_error="parameter name with a control character: 'properties.a\\r\\nX-Injected: yes'",
        ),
        id="crlf-in-key-errors-as-pixel",
    ),
    pytest.param(
        Row(
            VALID + b"&timestamp=%0d%0aSet-Cookie:%20%E2%80%A8x",
            200,
            TRANSPARENT_GIF,
            options={"errors_as_pixel": True},
            header_error="timestamp: must be an ISO 8601 date and time such as 2024-01-31T12:00:00.000Z, not '\\r\\nSet-Cookie: \\u2028x'",
        ),
        id="crlf-and-unicode-line-separator-errors-as-pixel",
    ),
    pytest.param(
        Row(VALID + CRLF_REVENUE, 400, b"properties.revenue: must be a number, not '1\\r\\nSet-Cookie: sid=evil'"),
        id="crlf-in-value-as-text",
    ),
    pytest.param(
        Row(VALID, 200, TRANSPARENT_GIF, environ={"HTTP_X_FORWARDED_FOR": "6.6.6.6"}, check=ip_is(REMOTE)),
        id="x-forwarded-for-without-trusted-proxies",
    ),
    pytest.param(
        Row(
            VALID,
            200,
            TRANSPARENT_GIF,
            options={"trusted_proxies": 1},
            environ={"HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.7"},
            check=ip_is("203.0.113.7"),
        ),
        id="x-forwarded-for-spoofed-hop-left-of-one-trusted-proxy",
    ),
    pytest.param(
        Row(
            VALID,
            200,
            TRANSPARENT_GIF,
            options={"trusted_proxies": 2},
            environ={"HTTP_X_FORWARDED_FOR": "6.6.6.6, 198.51.100.1, 203.0.113.7"},
            check=ip_is("198.51.100.1"),
        ),
        id="x-forwarded-for-two-trusted-proxies",
    ),
    pytest.param(
        Row(VALID, 200, TRANSPARENT_GIF, options={"trusted_proxies": 2}, environ={"HTTP_X_FORWARDED_FOR": "6.6.6.6"}, check=ip_is(REMOTE)),
        id="x-forwarded-for-fewer-hops-than-trusted-proxies",
    ),
    pytest.param(
        Row(
            VALID,
            200,
            TRANSPARENT_GIF,
            options={"trusted_proxies": 1},
            environ={"HTTP_X_FORWARDED_FOR": "<script>, ' OR 1=1"},
            check=ip_is(REMOTE),
        ),
        id="x-forwarded-for-garbage",
    ),
    pytest.param(
        Row(VALID + b"&context.ip=6.6.6.6", 200, TRANSPARENT_GIF, options={"ip": "anonymize"}, check=ip_is("192.0.2.0")),
        id="context-ip-parameter-cannot-defeat-anonymize",
    ),
    pytest.param(
        Row(
            VALID + b"&properties.revenue=%3Cscript%3Ealert(1)%3C/script%3E",
            400,
            b"properties.revenue: must be a number, not '<script>alert(1)</script>'",
        ),
        id="html-in-value",
    ),
    pytest.param(
        Row(VALID + b"&%3Cimg%20src=x%20onerror=alert(1)%3E=1", 400, b"unknown parameter: <img src", options={"unknown_params": "reject"}),
        id="html-in-unknown-parameter-name",
    ),
    pytest.param(Row(VALID + OVERRULE, 200, TRANSPARENT_GIF, check=server_fields_win), id="server-fields-cannot-be-overruled"),
    pytest.param(
        Row(VALID + OVERRULE, 200, TRANSPARENT_GIF, options={"unknown_params": "keep"}, check=server_fields_win),
        id="server-fields-cannot-be-overruled-keep",
    ),
    pytest.param(
        Row(VALID + OVERRULE, 200, TRANSPARENT_GIF, options={"unknown_params": "reject"}, check=server_fields_win),
        id="server-fields-cannot-be-overruled-reject",
    ),
    pytest.param(
        Row(VALID + b"&properties.n=" + b"9" * 5000, 200, TRANSPARENT_GIF, options={"infer_types": True}),
        id="infer-types-5000-digit-integer",
    ),
]


@pytest.mark.parametrize("row", ROWS)
def test_hostile_input(row: Row):
    app, events = memory_app(KEY, **row.options)
    try:
        response = call_wsgi(app, "/pixel/v1/track", row.query, **row.environ)
    finally:
        app.close()
    assert response.status == row.status
    assert response.body == row.body
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if row.status == 200:
        assert response.headers["Content-Type"] == "image/gif"
    else:
        # Text that no browser may sniff into HTML: a reflected value is only ever text.
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert not events
    # No header of any answer can carry a line break: nothing can be injected.
    for name, value in response.header_list:
        assert all(32 <= ord(char) < 127 for char in name + value), (name, value)
    assert response.headers.get("X-Pixel-Error") == row.header_error
    if row.header_error is not None:
        assert not events
    if row.check is not None:
        row.check(response, events)


# -- write keys in logs ------------------------------------------------------------

SECRET = "SeCrEt-0123456789abcdef"


def assert_key_not_logged(caplog, key: str = SECRET) -> None:
    assert caplog.records, "nothing was logged: the test proves nothing"
    # The first four characters at most: enough to tell keys apart, too few to use one.
    assert key[3:] not in caplog.text
    for record in caplog.records:
        assert key[3:] not in repr(record.args)


@pytest.mark.parametrize(
    ("query", "status", "options"),
    [
        pytest.param(f"writeKey={SECRET}x&anonymousId=a&event=E", 401, {}, id="unknown-key-401"),
        pytest.param(f"writeKey={SECRET}&anonymousId=a", 400, {}, id="valid-key-400"),
        pytest.param(f"writeKey={SECRET}&anonymousId=a&properties.revenue=x", 200, {"errors_as_pixel": True}, id="valid-key-pixel-error"),
        pytest.param(f"writeKey={SECRET}&writeKey={SECRET}&anonymousId=a&event=E", 400, {}, id="key-given-twice"),
        pytest.param(f"writeKey={SECRET}&anonymousId=a&event=E&properties.k={SECRET}%ff", 400, {}, id="key-echo-in-invalid-utf8"),
        pytest.param(f"writeKey={SECRET}&anonymousId=a&event=E", 404, {"enabled": False}, id="disabled-source-404"),
    ],
)
def test_write_key_is_never_logged_in_full(caplog, query, status, options):
    app, _ = memory_app(SECRET, **options)
    try:
        with caplog.at_level(logging.DEBUG, logger="pixel_wsgi"):
            response = call_wsgi(app, "/pixel/v1/track", query.encode())
            logging.getLogger("pixel_wsgi").info("app is %r", app)
    finally:
        app.close()
    assert response.status == status
    assert SECRET[3:] not in response.headers.get("X-Pixel-Error", "")
    assert_key_not_logged(caplog)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c["sources"].append({"name": "again", "write_key": SECRET}), id="duplicate-key"),
        pytest.param(
            lambda c: c["destinations"].update(rs={"type": "rudderstack", "write_key": SECRET, "data_plane_url": "nowhere", "retries": -1}),
            id="rudderstack-destination-errors",
        ),
        pytest.param(lambda c: c["sources"].append({"name": "second", "write_key": SECRET + "2", "ip": "none"}), id="second-source-errors"),
        pytest.param(lambda c: c["sources"][0].update(destinations=["nope"]), id="unknown-destination"),
        pytest.param(lambda c: c["sources"][0].update(enabled=SECRET), id="key-as-a-flag"),
    ],
)
def test_write_key_is_never_in_config_errors(caplog, mutate):
    config = memory_config(SECRET)
    mutate(config)
    with caplog.at_level(logging.DEBUG, logger="pixel_wsgi"), pytest.raises(ConfigError) as raised:
        PixelApp(config)
    logging.getLogger("pixel_wsgi").error("config error: %s", raised.value)
    assert SECRET[3:] not in str(raised.value)
    assert_key_not_logged(caplog)
