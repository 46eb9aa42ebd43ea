"""Regression tests for bugs the hardening fuzz found; each says which bug it pins."""

from __future__ import annotations

import pytest
from werkzeug.test import EnvironBuilder

from pixel_wsgi.testing import memory_app
from tests.support.wsgi import call_wsgi

VALID = b"writeKey=k&anonymousId=a&event=E"


def test_infer_types_keeps_an_integer_over_4300_digits_as_a_string():
    """Bug: with infer_types, ``properties.n=`` and 4,301+ digits was a 500.

    ``json.loads`` refuses integer strings over Python's 4300-digit limit with a
    ValueError that escaped the schema. Such a number is far beyond 2**53, so like any
    unsafe integer it stays a string.
    """
    app, events = memory_app("k", infer_types=True)
    digits = "9" * 5000
    response = call_wsgi(app, "/pixel/v1/track", VALID + b"&properties.n=" + digits.encode() + b"&properties.m[]=" + digits.encode())
    assert response.status == 200
    assert events[0]["properties"] == {"n": digits, "m": [digits]}


@pytest.mark.parametrize(
    ("query", "body"),
    [
        pytest.param("properties.a=\u20ac%ff", b"properties.a: value is not valid UTF-8", id="value"),
        pytest.param("\u20ac%ff=1", "parameter name is not valid UTF-8: '\u20ac%ff'".encode(), id="key"),
        pytest.param("properties.a=\ud800", b"properties.a: value is not valid UTF-8", id="lone-surrogate"),
    ],
)
def test_text_query_string_with_an_invalid_escape_is_a_400(query, body):
    """Bug: a QUERY_STRING holding real text (not PEP 3333's latin-1, as some hosts and
    test clients pass it) with an escape that is not UTF-8 was a 500: the
    UnicodeDecodeError was raised inside the UnicodeEncodeError handler, out of reach
    of the handler meant for it."""
    app, events = memory_app("k")
    environ = EnvironBuilder(path="/pixel/v1/track").get_environ()
    environ["QUERY_STRING"] = "writeKey=k&anonymousId=a&event=E&" + query
    answer = {}
    result = b"".join(app(environ, lambda status, headers, exc_info=None: answer.setdefault("status", status)))
    assert answer["status"] == "400 Bad Request"
    assert result == body
    assert not events


def test_text_query_string_that_is_valid_is_decoded():
    app, events = memory_app("k")
    environ = EnvironBuilder(path="/pixel/v1/track").get_environ()
    environ["QUERY_STRING"] = "writeKey=k&anonymousId=a&event=E&properties.price_label=\u20ac%20%C3%A9"
    answer = {}
    b"".join(app(environ, lambda status, headers, exc_info=None: answer.setdefault("status", status)))
    assert answer["status"] == "200 OK"
    assert events[0]["properties"]["price_label"] == "\u20ac \u00e9"
