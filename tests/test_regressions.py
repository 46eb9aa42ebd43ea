"""Regression tests for bugs the hardening fuzz found; each says which bug it pins."""

from __future__ import annotations

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
