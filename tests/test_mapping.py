"""The query→event mapping, one rule per case: query parameters → the event's fields."""

from __future__ import annotations

import pytest
from webtest import TestApp

from pixel_wsgi.testing import memory_app
from tests.conftest import WRITE_KEY
from tests.support.pixel import query

IDENTITY = f"writeKey={WRITE_KEY}&anonymousId=a1"


def track(client, extra: str, **kwargs):
    return client.get(f"/pixel/v1/track?{IDENTITY}&event=Clicked&{extra}", **kwargs)


@pytest.mark.parametrize(
    ("params", "expected_properties"),
    [
        pytest.param("properties.plan=pro", {"plan": "pro"}, id="dots-nest"),
        pytest.param("properties.a.b.c=deep", {"a": {"b": {"c": "deep"}}}, id="dots-nest-deep"),
        pytest.param("properties.q=caf%C3%A9+au+lait", {"q": "café au lait"}, id="percent-and-plus-decoded"),
        pytest.param("properties.eq=a%3Db%26c", {"eq": "a=b&c"}, id="encoded-separators"),
        pytest.param("properties.tags[]=a&properties.tags[]=b", {"tags": ["a", "b"]}, id="brackets-append"),
        pytest.param("properties.tags[]=only", {"tags": ["only"]}, id="brackets-append-single"),
        pytest.param("properties.tags%5B%5D=a&properties.tags%5B%5D=b", {"tags": ["a", "b"]}, id="encoded-brackets"),
        pytest.param(
            "properties.products[0].sku=A&properties.products[1].sku=B",
            {"products": [{"sku": "A"}, {"sku": "B"}]},
            id="indexed-objects",
        ),
        pytest.param(
            "properties.products.1.sku=B&properties.products.0.sku=A",
            {"products": [{"sku": "A"}, {"sku": "B"}]},
            id="numeric-segments-any-order",
        ),
        pytest.param("properties.m[0][1]=x&properties.m[0][0]=y", {"m": [["y", "x"]]}, id="nested-arrays"),
        pytest.param("properties.tag=a&properties.tag=b", {"tag": ["a", "b"]}, id="repeated-key-is-a-list"),
        pytest.param("properties[plan]=pro", {"plan": "pro"}, id="bracketed-name"),
        pytest.param("properties.empty=", {"empty": ""}, id="empty-string-kept"),
        pytest.param("properties.flag", {"flag": ""}, id="no-equals-sign"),
        pytest.param("properties.count=3&properties.ok=true", {"count": "3", "ok": "true"}, id="strings-without-infer"),
        pytest.param("properties.revenue=29.99", {"revenue": 29.99}, id="revenue-number"),
        pytest.param("properties.value=10", {"value": 10}, id="value-integer-number"),
        pytest.param(
            "properties.price=1.5&properties.total=2&properties.subtotal=3&properties.tax=0.1&properties.shipping=4&properties.discount=-1",
            {"price": 1.5, "total": 2, "subtotal": 3, "tax": 0.1, "shipping": 4, "discount": -1},
            id="commerce-numbers",
        ),
        pytest.param("properties.quantity=3", {"quantity": 3}, id="quantity-integer"),
        pytest.param("properties.revenue=&properties.quantity=", {}, id="empty-typed-omitted"),
        pytest.param("properties.item.revenue=abc", {"item": {"revenue": "abc"}}, id="typing-only-at-top-of-properties"),
        pytest.param("integrations.Amplitude=false&properties.a=1", {"a": "1"}, id="integrations-ignored"),
        # Only ASCII digits are array indexes: "²" was a 500 (isdigit, yet int() refuses
        # it) and fullwidth "１" read as index 1.
        pytest.param("properties.x.%C2%B2=sq", {"x": {"²": "sq"}}, id="superscript-digit-is-a-name"),
        pytest.param("properties.x.%EF%BC%91=fw", {"x": {"１": "fw"}}, id="fullwidth-digit-is-a-name"),
        pytest.param("properties.x[%C2%B2]=sq", {"x": {"²": "sq"}}, id="superscript-digit-in-brackets-is-a-name"),
    ],
)
def test_properties_mapping(client, events, params, expected_properties):
    track(client, params)
    assert events[0].get("properties", {}) == expected_properties
    assert events[0]["integrations"] == {"All": True}


@pytest.mark.parametrize(
    ("params", "expected_screen"),
    [
        pytest.param("context.screen.width=1920&context.screen.height=1080", {"width": 1920, "height": 1080}, id="width-height"),
        pytest.param("context.screen.innerWidth=800&context.screen.innerHeight=600", {"innerWidth": 800, "innerHeight": 600}, id="inner"),
        pytest.param("context.screen.density=2.5", {"density": 2.5}, id="density-number"),
        pytest.param("context.screen.width=", {}, id="empty-omitted"),
        pytest.param("context.screen.orientation=portrait", {"orientation": "portrait"}, id="other-stays-string"),
    ],
)
def test_screen_typing(client, events, params, expected_screen):
    track(client, params)
    assert events[0]["context"]["screen"] == expected_screen


@pytest.mark.parametrize(
    ("params", "message"),
    [
        pytest.param("properties..a=1", "properties..a: empty segment in the parameter name", id="double-dot"),
        pytest.param(".properties=1&properties.x=1", None, id="leading-dot-unknown-is-ignored"),
        pytest.param("properties.a.=1", "properties.a.: empty segment in the parameter name", id="trailing-dot"),
        pytest.param(
            "properties=x&properties.a=1",
            "conflicting parameters 'properties' and 'properties.a': properties cannot be both a value and a nested object or array",
            id="value-and-object",
        ),
        pytest.param(
            "properties.a.b=1&properties.a=x",
            "conflicting parameters 'properties.a.b' and 'properties.a': properties.a cannot be both a value and a nested object or array",
            id="object-then-value",
        ),
        pytest.param(
            "properties.a.b=1&properties.a[0]=x",
            "conflicting parameters 'properties.a.b' and 'properties.a[0]': properties.a cannot be both a value and a nested object or array",
            id="object-and-array",
        ),
        pytest.param(
            "properties.a[0]=1&properties.a.0=2",
            "conflicting parameters 'properties.a[0]' and 'properties.a.0': properties.a[0] cannot be both a value and a nested object or array",
            id="same-index-two-spellings",
        ),
        pytest.param(
            "properties.p[1].sku=B",
            "properties.p: array indexes must be contiguous from 0 (index 0 is missing)",
            id="not-from-zero",
        ),
        pytest.param(
            "properties.p[0]=a&properties.p[2]=c",
            "properties.p: array indexes must be contiguous from 0 (index 1 is missing)",
            id="gap",
        ),
        pytest.param("properties.p[101]=a", "properties.p[101]: array index 101 is over the limit of 100", id="index-over-100"),
        pytest.param("properties.a[]b=1", "properties.a[]b: malformed brackets in the parameter name", id="text-after-brackets"),
        pytest.param("properties.a[x=1", "properties.a[x: malformed brackets in the parameter name", id="unclosed-bracket"),
        pytest.param("properties.a[].b=1", "properties.a[].b: '[]' may only end a parameter name", id="append-in-middle"),
        pytest.param(
            "properties=flat", "properties: must be given as nested parameters (name.key=value), not as a value", id="properties-not-object"
        ),
        pytest.param(
            "context=flat", "context: must be given as nested parameters (name.key=value), not as a value", id="context-not-object"
        ),
        pytest.param("properties.revenue=abc", "properties.revenue: must be a number, not 'abc'", id="revenue-not-number"),
        pytest.param("properties.revenue=NaN", "properties.revenue: must be a number, not 'NaN'", id="revenue-nan"),
        pytest.param("properties.revenue=1e999", "properties.revenue: must be a number, not '1e999'", id="revenue-infinite"),
        pytest.param("properties.revenue=1_000", "properties.revenue: must be a number, not '1_000'", id="revenue-underscore"),
        pytest.param("properties.quantity=1.5", "properties.quantity: must be an integer, not '1.5'", id="quantity-not-integer"),
        pytest.param("context.screen.width=wide", "context.screen.width: must be an integer, not 'wide'", id="width-not-integer"),
        pytest.param("context.screen.density=x", "context.screen.density: must be a number, not 'x'", id="density-not-number"),
        pytest.param(
            "properties.revenue=1&properties.revenue=2",
            "properties.revenue: given more than once; a single value is required",
            id="typed-repeated",
        ),
        pytest.param(
            "properties.revenue.usd=1",
            "properties.revenue: must be a single value, not a nested object or array",
            id="typed-object",
        ),
        pytest.param("userId=u1&userId=u2", "userId: given more than once; a single value is required", id="userId-repeated"),
        pytest.param("userId.x=1", "userId: must be a single value, not a nested object or array", id="userId-object"),
        pytest.param("messageId=" + "m" * 129, "messageId: must be 1 to 128 printable ASCII characters", id="messageId-too-long"),
        pytest.param("messageId=has%20space", "messageId: must be 1 to 128 printable ASCII characters", id="messageId-space"),
        pytest.param("messageId=caf%C3%A9", "messageId: must be 1 to 128 printable ASCII characters", id="messageId-non-ascii"),
        pytest.param(
            "originalTimestamp=yesterday",
            "originalTimestamp: must be an ISO 8601 date and time such as 2024-01-31T12:00:00.000Z, not 'yesterday'",
            id="timestamp-not-iso",
        ),
        pytest.param(
            "sentAt=2024-02-30T10:00:00Z",
            "sentAt: must be an ISO 8601 date and time such as 2024-01-31T12:00:00.000Z, not '2024-02-30T10:00:00Z'",
            id="timestamp-impossible-date",
        ),
        pytest.param(
            "timestamp=2024-01-01",
            "timestamp: must be an ISO 8601 date and time such as 2024-01-31T12:00:00.000Z, not '2024-01-01'",
            id="timestamp-date-only",
        ),
    ],
)
def test_invalid_parameters_are_400_naming_the_parameter(client, events, params, message):
    response = track(client, params, expect_errors=True)
    if message is None:
        assert response.status_int == 200
        return
    assert response.status_int == 400
    assert response.content_type == "text/plain"
    assert response.text == message
    assert "\n" not in response.text
    assert events == []


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        pytest.param(
            "track", f"writeKey={WRITE_KEY}&event=E", "anonymousId or userId is required (at least one, not empty)", id="no-identity"
        ),
        pytest.param(
            "track",
            f"writeKey={WRITE_KEY}&event=E&anonymousId=&userId=",
            "anonymousId or userId is required (at least one, not empty)",
            id="empty-identity",
        ),
        pytest.param("track", f"writeKey={WRITE_KEY}&anonymousId=a", "event: required", id="no-event"),
        pytest.param("track", f"writeKey={WRITE_KEY}&anonymousId=a&event=", "event: required, must not be empty", id="empty-event"),
        pytest.param("page", "anonymousId=a", "writeKey: required", id="no-write-key"),
        pytest.param("page", "writeKey=&anonymousId=a", "writeKey: required", id="empty-write-key"),
        pytest.param(
            "page",
            f"writeKey={WRITE_KEY}&writeKey={WRITE_KEY}&anonymousId=a",
            "writeKey: given more than once; a single value is required",
            id="two-write-keys",
        ),
    ],
)
def test_required_fields(client, path, params, message):
    response = client.get(f"/pixel/v1/{path}?{params}", status=400)
    assert response.text == message


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param("anonymousId=%22amp-abc%22", {"anonymousId": "amp-abc"}, id="quoted-anonymousId-unwrapped"),
        pytest.param("anonymousId=a%22b", {"anonymousId": 'a"b'}, id="inner-quote-kept"),
        pytest.param("userId=u1", {"userId": "u1"}, id="userId-alone"),
        pytest.param("userId=u1&anonymousId=", {"userId": "u1"}, id="empty-anonymousId-left-out"),
        pytest.param("anonymousId=a&name=", {"anonymousId": "a", "name": "Unknown Page"}, id="empty-name-unknown-page"),
        pytest.param("anonymousId=a&category=Docs&name=Intro", {"category": "Docs", "name": "Intro"}, id="category-and-name"),
        pytest.param("anonymousId=a&channel=email", {"channel": "email"}, id="channel-given"),
        pytest.param("anonymousId=a&messageId=msg-1", {"messageId": "msg-1"}, id="client-messageId"),
        pytest.param(
            "anonymousId=a&originalTimestamp=2024-01-31T12:00:00.000Z&sentAt=2024-01-31T12:00:01%2B01:00",
            {"originalTimestamp": "2024-01-31T12:00:00.000Z", "sentAt": "2024-01-31T12:00:01+01:00"},
            id="client-timestamps",
        ),
        pytest.param("anonymousId=a&timestamp=2024-01-31T12:00:00Z", {"timestamp": "2024-01-31T12:00:00Z"}, id="timestamp"),
        pytest.param("anonymousId=a&type=track&receivedAt=2000-01-01T00:00:00Z", {"type": "page"}, id="server-owned-ignored"),
        pytest.param("anonymousId=a&event=Ignored", {"anonymousId": "a"}, id="event-on-page-is-unknown"),
    ],
)
def test_page_fields(client, events, params, expected):
    client.get(f"/pixel/v1/page?writeKey={WRITE_KEY}&{params}")
    [event] = events
    assert {key: event.get(key) for key in expected} == expected
    assert "event" not in event
    assert event["receivedAt"] != "2000-01-01T00:00:00Z"


def test_page_without_name_has_no_name(client, events):
    client.get(f"/pixel/v1/page?writeKey={WRITE_KEY}&anonymousId=a")
    assert "name" not in events[0]


def test_page_mirror_never_overwrites(client, events):
    client.get(f"/pixel/v1/page?writeKey={WRITE_KEY}&anonymousId=a&properties.title=P&context.page.title=C&properties.search=%3Fq%3D1")
    event = events[0]
    assert event["properties"] == {"title": "P", "search": "?q=1"}
    assert event["context"]["page"] == {"title": "C", "search": "?q=1"}


def test_track_has_no_page_mirror(client, events):
    track(client, "context.page.path=/x")
    assert "properties" not in events[0]


def test_write_key_never_in_the_event(client, events):
    track(client, "properties.writeKey=inner")
    assert "writeKey" not in events[0]
    assert events[0]["properties"] == {"writeKey": "inner"}


def test_context_is_open(client, events):
    track(client, "context.campaign.name=spring&context.campaign.source=email&context.traits.plan=pro")
    context = events[0]["context"]
    assert context["campaign"] == {"name": "spring", "source": "email"}
    assert context["traits"] == {"plan": "pro"}


@pytest.mark.parametrize(
    ("mode", "status", "expected"),
    [
        pytest.param("ignore", 200, {}, id="ignore"),
        pytest.param("keep", 200, {"cb": "123", "_": "x", "utm": {"source": "mail"}}, id="keep"),
        pytest.param("reject", 400, "unknown parameters: cb, _, utm.source", id="reject"),
    ],
)
def test_unknown_parameters(mode, status, expected):
    app, events = memory_app(WRITE_KEY, unknown_params=mode)
    response = TestApp(app).get(f"/pixel/v1/track?{IDENTITY}&event=E&cb=123&_=x&utm.source=mail&type=page", status=status)
    if status == 400:
        assert response.text == expected
        return
    kept = {key: value for key, value in events[0].items() if key in ("cb", "_", "utm")}
    assert kept == expected
    assert events[0]["type"] == "track"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("42", 42, id="integer"),
        pytest.param("-3", -3, id="negative"),
        pytest.param("1.5", 1.5, id="decimal"),
        pytest.param("0", 0, id="zero"),
        pytest.param("true", True, id="true"),
        pytest.param("false", False, id="false"),
        pytest.param("null", None, id="null"),
        pytest.param("02139", "02139", id="zip-code-stays-string"),
        pytest.param("1e5", "1e5", id="exponent-stays-string"),
        pytest.param("1.50", "1.50", id="trailing-zero-stays-string"),
        pytest.param("-0", "-0", id="minus-zero-stays-string"),
        pytest.param("+1", "+1", id="plus-stays-string"),
        pytest.param("True", "True", id="capitalised-stays-string"),
        pytest.param("12345678901234567890", "12345678901234567890", id="beyond-2-53-stays-string"),
        pytest.param("", "", id="empty-stays-string"),
    ],
)
def test_infer_types(value, expected):
    app, events = memory_app(WRITE_KEY, infer_types=True)
    TestApp(app).get(f"/pixel/v1/track?{IDENTITY}&event=E&{query([('properties.v', value)])}")
    assert events[0]["properties"]["v"] == expected
    assert type(events[0]["properties"]["v"]) is type(expected)


def test_infer_types_reaches_nested_values_and_lists():
    app, events = memory_app(WRITE_KEY, infer_types=True)
    TestApp(app).get(f"/pixel/v1/track?{IDENTITY}&event=E&properties.a.b=1&properties.l[]=true&properties.l[]=x&properties.revenue=5")
    assert events[0]["properties"] == {"a": {"b": 1}, "l": [True, "x"], "revenue": 5}


def test_infer_types_does_not_touch_context():
    app, events = memory_app(WRITE_KEY, infer_types=True)
    TestApp(app).get(f"/pixel/v1/track?{IDENTITY}&event=E&context.n=1")
    assert events[0]["context"]["n"] == "1"
