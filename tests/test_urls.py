"""pixel_url(): what it builds is what the app parses back (property test), and what it refuses."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixel_wsgi import pixel_url
from pixel_wsgi.event import PAGE_MIRRORED_FIELDS
from pixel_wsgi.schemas import INTEGER_PROPERTIES, INTEGER_SCREEN_FIELDS, NUMBER_PROPERTIES, NUMBER_SCREEN_FIELDS

from .conftest import WRITE_KEY

BASE = "http://localhost/pixel/v1"
TYPED_PROPERTIES = NUMBER_PROPERTIES | INTEGER_PROPERTIES
TYPED_SCREEN = NUMBER_SCREEN_FIELDS | INTEGER_SCREEN_FIELDS


def fetch(client: Any, url: str, status: int = 200) -> Any:
    parts = urlsplit(url)
    return client.get(f"{parts.path}?{parts.query}", status=status)


# -- the round trip -----------------------------------------------------------

# Names the parser reads back unchanged: no '.', '[' or ']', not all digits, no
# control characters; anything else (spaces, '&', '=', '%', '+', non-ASCII) must survive
# percent-encoding.
names = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=".[]"), min_size=1, max_size=12).filter(
    lambda name: not name.isdigit()
)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
scalars = st.one_of(texts, st.integers(-(10**12), 10**12), st.booleans())
numbers = st.one_of(st.integers(-(10**9), 10**9), st.floats(allow_nan=False, allow_infinity=False, width=64))


def values(depth: int = 2) -> st.SearchStrategy[Any]:
    if depth == 0:
        return scalars
    inner = values(depth - 1)
    return st.one_of(
        scalars,
        st.lists(scalars, min_size=1, max_size=3),
        st.lists(st.dictionaries(names, inner, min_size=1, max_size=3), min_size=1, max_size=3),
        st.dictionaries(names, inner, min_size=1, max_size=3),
    )


def objects(reserved: frozenset[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(names.filter(lambda name: name not in reserved), values(), max_size=4)


def as_text(value: Any) -> Any:
    """What the app gives back for an untyped value: strings all the way down."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return [as_text(item) for item in value]
    if isinstance(value, dict):
        return {key: as_text(item) for key, item in value.items()}
    return value


def numbers_equal(sent: float, received: Any) -> bool:
    # Floats travel as their shortest repr, which Python reads back exactly.
    return isinstance(received, (int, float)) and not isinstance(received, bool) and sent == received


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    event_type=st.sampled_from(["page", "track"]),
    label=texts.filter(bool),
    anonymous_id=st.one_of(st.none(), texts.filter(lambda t: bool(t) and not (len(t) >= 2 and t[0] == t[-1] == '"'))),
    user_id=texts.filter(bool),
    properties=objects(TYPED_PROPERTIES | frozenset(PAGE_MIRRORED_FIELDS)),
    typed=st.dictionaries(st.sampled_from(sorted(NUMBER_PROPERTIES)), numbers, max_size=2),
    quantity=st.one_of(st.none(), st.integers(0, 10**6)),
    context=objects(frozenset({"ip", "pixel", "library", "userAgent", "screen", "page"})),
    screen=st.fixed_dictionaries({}, optional={"width": st.integers(0, 10**5), "density": numbers}),
)
def test_pixel_url_round_trips_through_the_app(
    client, events, event_type, label, anonymous_id, user_id, properties, typed, quantity, context, screen
):
    events.clear()
    sent_properties = {**properties, **typed, **({"quantity": quantity} if quantity is not None else {})}
    sent_context = {**context, **({"screen": screen} if screen else {})}
    label_argument = {"event": label} if event_type == "track" else {"name": label}
    url = pixel_url(
        BASE,
        WRITE_KEY,
        event_type,
        anonymous_id=anonymous_id,
        user_id=user_id,
        properties=sent_properties,
        context=sent_context,
        **label_argument,
    )
    fetch(client, url)
    [event] = events

    assert event["type"] == event_type
    assert event["event" if event_type == "track" else "name"] == label
    assert event["userId"] == user_id
    assert event.get("anonymousId") == (anonymous_id or None)

    received = dict(event.get("properties", {}))
    for key, number in {**typed, **({"quantity": quantity} if quantity is not None else {})}.items():
        assert numbers_equal(number, received.pop(key)), key
    assert received == as_text(properties)

    received_context = {key: value for key, value in event["context"].items() if key not in ("ip", "library", "userAgent")}
    received_screen = received_context.pop("screen", {})
    assert received_context == as_text(context)
    assert set(received_screen) == set(screen)
    for key, number in screen.items():
        assert numbers_equal(number, received_screen[key]), key


def test_lists_of_scalars_use_brackets_and_lists_of_objects_use_indexes():
    url = pixel_url(
        BASE, "k", "track", event="Order Completed", user_id="u1",
        properties={"tags": ["a", "b"], "products": [{"sku": "A"}, {"sku": "B & C"}]},
    )  # fmt: skip
    query = urlsplit(url).query.split("&")
    assert "properties.tags%5B%5D=a" in query and "properties.tags%5B%5D=b" in query
    assert "properties.products%5B1%5D.sku=B%20%26%20C" in query
    assert url.startswith("http://localhost/pixel/v1/track?writeKey=k&event=Order%20Completed&")


def test_typed_fields_come_back_as_numbers(client, events):
    url = pixel_url(
        BASE, WRITE_KEY, "track", event="Bought", anonymous_id="a1",
        properties={"revenue": "29.99", "quantity": 2, "sku": 123},
        context={"screen": {"width": 1920, "density": 2.5}},
    )  # fmt: skip
    fetch(client, url)
    assert events[0]["properties"] == {"revenue": 29.99, "quantity": 2, "sku": "123"}
    assert events[0]["context"]["screen"] == {"width": 1920, "density": 2.5}


def test_none_and_empty_containers_are_left_out(client, events):
    url = pixel_url(BASE, WRITE_KEY, user_id="u1", name="Home", properties={"a": None, "b": [], "c": {}, "d": "x"}, cb="123")
    assert "cb=123" in url
    fetch(client, url)
    assert events[0]["properties"] == {"d": "x"}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param({"properties": {"a.b": "x"}}, "cannot contain", id="dot-in-name"),
        pytest.param({"properties": {"a[0]": "x"}}, "cannot contain", id="bracket-in-name"),
        pytest.param({"properties": {"items": [{"0": "x"}]}}, "all digits", id="digit-name"),
        pytest.param({"context": {"": "x"}}, "cannot be empty", id="empty-name"),
        pytest.param({"context": {"a\nb": "x"}}, "control", id="control-character"),
        pytest.param({"properties": {"revenue": "lots"}}, "revenue", id="non-numeric-revenue"),
        pytest.param({"properties": {"quantity": 1.5}}, "quantity", id="fractional-quantity"),
        pytest.param({"properties": {"revenue": True}}, "revenue", id="boolean-revenue"),
        pytest.param({"context": {"screen": {"width": "wide"}}}, "width", id="non-numeric-width"),
        pytest.param({"properties": {"price": math.nan}}, "price", id="nan"),
        pytest.param({"properties": {"tags": ["a", None]}}, "list item", id="none-in-list"),
        pytest.param({"context": {"ip": "1.2.3.4"}}, "context.ip", id="context-ip"),
        pytest.param({"context": {"pixel": {"fetcher": "me"}}}, "context.pixel", id="context-pixel"),
        pytest.param({"writeKey": "other"}, "cannot be set", id="writeKey-in-extra"),
        pytest.param({"integrations": {"All": False}}, "cannot be set", id="integrations"),
        pytest.param({"anonymousId": "x"}, "anonymous_id", id="camel-case-duplicate"),
        pytest.param({"user_id": None}, "anonymous_id or user_id", id="no-identity"),
        pytest.param({"user_id": '"quoted"'}, None, id="quoted-user-id-is-fine"),
        pytest.param({"anonymous_id": '"quoted"'}, "double quotes", id="quoted-anonymous-id"),
        pytest.param({"properties": {"s": "\udc80"}}, "UTF-8", id="lone-surrogate"),
    ],
)
def test_what_cannot_round_trip_is_refused(arguments, message):
    call = {"user_id": "u1", "name": "Home", **arguments}
    if message is None:
        assert pixel_url(BASE, "k", **call)
        return
    with pytest.raises(ValueError, match=message):
        pixel_url(BASE, "k", **call)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param({"type": "identify"}, "type must be", id="unknown-type"),
        pytest.param({"type": "track"}, "event is required", id="track-without-event"),
        pytest.param({"event": "Clicked"}, "event is for track", id="event-on-page"),
        pytest.param({"base_url": "https://x/pixel/v1?a=1"}, "query string", id="query-in-base"),
        pytest.param({"write_key": ""}, "write_key", id="no-write-key"),
    ],
)
def test_bad_calls_are_refused(arguments, message):
    call = {"base_url": BASE, "write_key": "k", "user_id": "u1", **arguments}
    with pytest.raises(ValueError, match=message):
        pixel_url(**call)


def test_values_without_a_text_form_are_a_type_error():
    with pytest.raises(TypeError, match="bytes"):
        pixel_url(BASE, "k", user_id="u1", properties={"blob": b"x"})
