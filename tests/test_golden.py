"""The two sample payloads of the RudderStack Pixel API reference are golden cases.

Payloads as printed in the reference (they leave out the fields the server adds:
messageId, originalTimestamp, sentAt, receivedAt); the calls are the reference's sample
calls filled with the payloads' values.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import WRITE_KEY
from tests.support.pixel import query, without_server_fields

GOLDEN_PAGE = {
    "type": "page",
    "anonymousId": "anon-123",
    "name": "Home Page",
    "properties": {"path": "/home", "url": "https://example.com/home", "referrer": "https://example.com/", "title": "Home"},
    "context": {
        "locale": "en-US",
        "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
        "page": {"path": "/home", "url": "https://example.com/home", "referrer": "https://example.com/", "title": "Home"},
        "screen": {"width": 1920, "height": 1080},
    },
}

GOLDEN_TRACK = {
    "type": "track",
    "anonymousId": "anon-123",
    "event": "Product Viewed",
    "name": "Product Page",
    "properties": {"productId": "sku-123", "revenue": 29.99},
    "context": {
        "locale": "en-US",
        "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
        "page": {
            "path": "/product/sku-123",
            "url": "https://example.com/product/sku-123",
            "referrer": "https://example.com/",
            "title": "Product Page",
        },
        "screen": {"width": 1920, "height": 1080},
    },
}

COMMON = [
    ("anonymousId", "anon-123"),
    ("context.locale", "en-US"),
    ("context.userAgent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"),
]
PAGE_CALL = [
    ("writeKey", WRITE_KEY),
    *COMMON,
    ("context.page.path", "/home"),
    ("context.page.url", "https://example.com/home"),
    ("context.page.referrer", "https://example.com/"),
    ("context.page.title", "Home"),
    ("context.screen.width", "1920"),
    ("context.screen.height", "1080"),
    ("properties.path", "/home"),
    ("properties.url", "https://example.com/home"),
    ("properties.referrer", "https://example.com/"),
    ("properties.title", "Home"),
    ("name", "Home Page"),
]
TRACK_CALL = [
    ("writeKey", WRITE_KEY),
    *COMMON,
    ("context.page.path", "/product/sku-123"),
    ("context.page.url", "https://example.com/product/sku-123"),
    ("context.page.referrer", "https://example.com/"),
    ("context.page.title", "Product Page"),
    ("context.screen.width", "1920"),
    ("context.screen.height", "1080"),
    ("event", "Product Viewed"),
    ("name", "Product Page"),
    ("properties.productId", "sku-123"),
    ("properties.revenue", "29.99"),
]
# The reference's sample calls also name the AMP SDK as the library and AMP as platform.
AMP_LIBRARY = [("context.library.name", "Rudderstack AMP SDK"), ("context.library.version", "1.0.0"), ("context.platform", "AMP")]
ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\Z")
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


@pytest.mark.parametrize(
    ("path", "call", "golden"),
    [
        pytest.param("/pixel/v1/page", PAGE_CALL, GOLDEN_PAGE, id="page"),
        pytest.param("/pixel/v1/track", TRACK_CALL, GOLDEN_TRACK, id="track"),
    ],
)
def test_sample_call_gives_the_golden_payload(client, events, path, call, golden):
    response = client.get(f"{path}?{query(call)}", extra_environ={"REMOTE_ADDR": "203.0.113.9"})
    assert response.status_int == 200
    assert response.content_type == "image/gif"
    [event] = events
    assert without_server_fields(event) == golden
    # ...and the fields the server adds, each as the README's "Fields the server adds" describes.
    assert UUID4.match(event["messageId"])
    assert ISO_UTC.match(event["receivedAt"])
    assert event["originalTimestamp"] == event["sentAt"] == event["receivedAt"]
    assert event["channel"] == "web"
    assert event["integrations"] == {"All": True}
    assert event["context"]["ip"] == "203.0.113.9"
    assert event["context"]["library"]["name"] == "pixel-wsgi"


@pytest.mark.parametrize(
    ("path", "call", "golden"),
    [
        pytest.param("/pixel/v1/page", PAGE_CALL, GOLDEN_PAGE, id="page"),
        pytest.param("/pixel/v1/track", TRACK_CALL, GOLDEN_TRACK, id="track"),
    ],
)
def test_reference_sample_call_with_amp_library(client, events, path, call, golden):
    client.get(f"{path}?{query(call + AMP_LIBRARY)}")
    [event] = events
    stripped = without_server_fields(event)
    assert event["context"]["library"] == {"name": "Rudderstack AMP SDK", "version": "1.0.0"}
    assert stripped["context"].pop("platform") == "AMP"
    assert stripped == golden


def test_page_properties_are_mirrored_from_context_page(client, events):
    """Only context.page given: properties get the same four fields (and vice versa)."""
    call = [(key, value) for key, value in PAGE_CALL if not key.startswith("properties.")]
    client.get(f"/pixel/v1/page?{query(call)}")
    assert without_server_fields(events[0]) == GOLDEN_PAGE


def test_page_context_is_mirrored_from_properties(client, events):
    call = [(key, value) for key, value in PAGE_CALL if not key.startswith("context.page.")]
    client.get(f"/pixel/v1/page?{query(call)}")
    assert without_server_fields(events[0]) == GOLDEN_PAGE
