"""The query limits: each limit, at and over its bound, and configurable."""

from __future__ import annotations

import pytest
from webtest import TestApp

from pixel_wsgi.testing import memory_app
from tests.conftest import WRITE_KEY

BASE = f"writeKey={WRITE_KEY}&anonymousId=a&event=E"


def deep_key(depth: int) -> str:
    return "properties." + ".".join(f"k{i}" for i in range(depth - 1))


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        pytest.param("&".join(f"properties.p{i}=1" for i in range(997)), 200, None, id="1000-params-ok"),
        pytest.param(
            "&".join(f"properties.p{i}=1" for i in range(998)), 400, "too many parameters: 1001, the limit is 1000", id="1001-params"
        ),
        pytest.param(f"{deep_key(32)}=x", 200, None, id="depth-32-ok"),
        pytest.param(f"{deep_key(33)}=x", 400, f"{deep_key(33)}: nested deeper than the limit of 32 levels", id="depth-33"),
        pytest.param(f"properties.{'k' * 245}=x", 200, None, id="key-256-ok"),
        pytest.param(
            f"properties.{'k' * 246}=x",
            400,
            f"parameter name longer than the limit of 256 characters: {'properties.' + 'k' * 29!r}…",
            id="key-257",
        ),
        pytest.param("&".join(f"properties.a[{i}]=x" for i in range(101)), 200, None, id="index-100-ok"),
        pytest.param("properties.a[101]=x", 400, "properties.a[101]: array index 101 is over the limit of 100", id="index-101"),
        pytest.param(
            "properties.a.1000000000=x", 400, "properties.a.1000000000: array index 1000000000 is over the limit of 100", id="index-10-9"
        ),
        pytest.param("properties.%FF=x", 400, "parameter name is not valid UTF-8: 'properties.%FF'", id="key-not-utf8"),
        pytest.param("properties.a=%C3%28", 400, "properties.a: value is not valid UTF-8", id="value-not-utf8"),
        pytest.param("properties.a%00b=x", 400, "parameter name with a control character: 'properties.a\\x00b'", id="nul-in-key"),
        pytest.param("properties.a%0Ab=x", 400, "parameter name with a control character: 'properties.a\\nb'", id="newline-in-key"),
        pytest.param("properties.a%7Fb=x", 400, "parameter name with a control character: 'properties.a\\x7fb'", id="delete-in-key"),
        pytest.param("properties.v=line1%0D%0Aline2", 200, None, id="crlf-in-value-ok"),
        pytest.param("=x", 400, "parameter with an empty name", id="empty-key"),
    ],
)
def test_limits(client, events, extra, status, message):
    response = client.get(f"/pixel/v1/track?{BASE}&{extra}", status=status)
    if message is not None:
        assert response.text == message
    else:
        assert len(events) == 1


def test_query_length_limit_is_414_at_one_byte_over(client):
    padding = 32 * 1024 - len(BASE) - len("&x=")
    client.get(f"/pixel/v1/track?{BASE}&x={'y' * padding}", status=200)
    client.get(f"/pixel/v1/track?{BASE}&x={'y' * (padding + 1)}", status=414)


def test_limits_are_configurable():
    app, _ = memory_app(
        WRITE_KEY,
        limits={"max_query_length": 100, "max_params": 5, "max_depth": 3, "max_key_length": 20, "max_array_index": 2},
    )
    client = TestApp(app)
    client.get(f"/pixel/v1/track?{BASE}&properties.a.b=1", status=200)
    assert client.get(f"/pixel/v1/track?{BASE}&properties.a.b.c=1", status=400).text.endswith("limit of 3 levels")
    assert client.get(f"/pixel/v1/track?{BASE}&properties.a[3]=1", status=400).text.endswith("over the limit of 2")
    assert client.get(f"/pixel/v1/track?{BASE}&a=1&b=2&c=3", status=400).text == "too many parameters: 6, the limit is 5"
    assert client.get(f"/pixel/v1/track?{BASE}&properties.abcdefghij=1", status=400).text.startswith("parameter name longer")
    client.get(f"/pixel/v1/track?{BASE}&x={'y' * 100}", status=414)


def test_raw_utf8_bytes_in_the_query_are_decoded(pixel):
    """A server hands the raw bytes as latin-1 (PEP 3333) when the client did not escape them."""
    app, events = pixel
    raw = f"{BASE}&properties.city=Zürich".encode().decode("latin-1")
    statuses = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/pixel/v1/track", "QUERY_STRING": raw}
    b"".join(app(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["200 OK"]
    assert events[0]["properties"]["city"] == "Zürich"
