"""Segment's pixel API under ``segment_prefix``: ``?data=<base64 JSON>`` and the plain query form."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import urlencode

import pytest
from webtest import TestApp

from pixel_wsgi.errors import ConfigError
from pixel_wsgi.responses import TRANSPARENT_GIF
from pixel_wsgi.signing import sign
from pixel_wsgi.testing import memory_app

from .support.pixel import without_server_fields

WRITE_KEY = "test-write-key"
SEGMENT = "/v1/pixel"

# The call of Segment's pixel documentation: the JSON of a track call, write key inside.
SEGMENT_CALL = {
    "writeKey": WRITE_KEY,
    "userId": "019mr8mf4r",
    "event": "Email Opened",
    "properties": {"subject": "The Electric Daily", "email": "peter@example.com", "revenue": 2.5, "quantity": 3, "opened": True},
    "context": {"campaign": {"name": "daily", "medium": "email"}},
}


def segment_data(call, *, urlsafe: bool = False, padding: bool = True) -> str:
    """Built the way Segment's docs build it: JSON, then base64, then ``data=``."""
    raw = json.dumps(call).encode("utf-8")
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode("ascii")
    return encoded if padding else encoded.rstrip("=")


@pytest.fixture
def segment():
    app, events = memory_app(segment_prefix=SEGMENT)
    yield TestApp(app), events
    app.close()


def test_segment_pixel_data_makes_the_same_event_as_the_query_form(segment):
    client, events = segment
    client.get(f"{SEGMENT}/track?{urlencode({'data': segment_data(SEGMENT_CALL)})}")
    query = {
        "writeKey": WRITE_KEY,
        "userId": "019mr8mf4r",
        "event": "Email Opened",
        "properties.subject": "The Electric Daily",
        "properties.email": "peter@example.com",
        "properties.revenue": "2.5",
        "properties.quantity": "3",
        "properties.opened": "true",
        "context.campaign.name": "daily",
        "context.campaign.medium": "email",
    }
    client.get(f"/pixel/v1/track?{urlencode(query)}")
    from_data, from_query = (without_server_fields(event) for event in events)
    assert from_data == from_query
    # The same typing as the query form: the typed fields are numbers, the rest strings.
    assert from_data["properties"] == {
        "subject": "The Electric Daily",
        "email": "peter@example.com",
        "revenue": 2.5,
        "quantity": 3,
        "opened": "true",
    }


@pytest.mark.parametrize(
    ("urlsafe", "padding", "percent_encoded"),
    [
        pytest.param(False, True, True, id="standard"),
        pytest.param(False, False, True, id="standard-no-padding"),
        pytest.param(True, True, True, id="urlsafe"),
        pytest.param(True, False, False, id="urlsafe-no-padding-raw"),
        pytest.param(False, True, False, id="standard-raw-plus-becomes-space"),
    ],
)
def test_every_base64_flavour_is_read(segment, urlsafe, padding, percent_encoded):
    client, events = segment
    # '>' and '?' in the text make '+' and '/' (or '-' and '_') appear in the base64.
    call = dict(SEGMENT_CALL, properties={"subject": "a>b?c>>>???"})
    data = segment_data(call, urlsafe=urlsafe, padding=padding)
    assert set(data) & set("+/-_")
    query = urlencode({"data": data}) if percent_encoded else f"data={data}"
    client.get(f"{SEGMENT}/track?{query}")
    assert events[0]["properties"]["subject"] == "a>b?c>>>???"


def test_page_calls_and_nested_lists(segment):
    client, events = segment
    call = {
        "writeKey": WRITE_KEY,
        "anonymousId": "anon-1",
        "name": "Pricing",
        "properties": {"tags": ["a", "b"], "products": [{"sku": "A", "price": 1.5}, {"sku": "B"}], "none": None, "empty": []},
    }
    client.get(f"{SEGMENT}/page?{urlencode({'data': segment_data(call)})}")
    event = events[0]
    assert event["type"] == "page" and event["name"] == "Pricing"
    assert event["properties"] == {"tags": ["a", "b"], "products": [{"sku": "A", "price": "1.5"}, {"sku": "B"}]}


def test_the_plain_query_form_works_under_the_segment_prefix(segment):
    client, events = segment
    client.get(f"{SEGMENT}/track?writeKey={WRITE_KEY}&userId=u&event=Opened&properties.revenue=3")
    assert events[0]["event"] == "Opened" and events[0]["properties"] == {"revenue": 3}


def test_head_under_the_segment_prefix_records_nothing(segment):
    client, events = segment
    client.head(f"{SEGMENT}/track?{urlencode({'data': segment_data(SEGMENT_CALL)})}", status=200)
    assert events == []


def test_other_parameters_sit_beside_the_data(segment):
    client, events = segment
    client.get(f"{SEGMENT}/track?{urlencode({'data': segment_data(SEGMENT_CALL), 'cb': '12345'})}")
    assert len(events) == 1


def test_a_signature_covers_the_data_parameter():
    secret = "segment-secret-0123456789"
    app, events = memory_app(segment_prefix=SEGMENT, signing_secrets=[secret], require_signature=True)
    client = TestApp(app)
    data = segment_data(SEGMENT_CALL)
    client.get(f"{SEGMENT}/track?{urlencode({'data': data, 'sig': sign([('data', data)], secret)})}")
    forged = segment_data(dict(SEGMENT_CALL, event="Order Completed"))
    client.get(f"{SEGMENT}/track?{urlencode({'data': forged, 'sig': sign([('data', data)], secret)})}", status=403)
    assert [event["event"] for event in events] == ["Email Opened"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param("not base64!", "data: not base64", id="not-base64"),
        pytest.param("YW=Jj", "data: not base64", id="padding-inside"),
        pytest.param("a", "data: not base64", id="impossible-length"),
        pytest.param(base64.b64encode(b"\xff\xfe").decode(), "data: not UTF-8 JSON", id="not-utf8"),
        pytest.param(base64.b64encode(b"{nope").decode(), "data: not JSON", id="not-json"),
        pytest.param(base64.b64encode(b"[1, 2]").decode(), "data: must be a JSON object", id="array"),
        pytest.param(base64.b64encode(b'"text"').decode(), "data: must be a JSON object", id="string"),
        pytest.param(base64.b64encode(b"[" * 100_00 + b"]" * 100_00).decode(), "data: ", id="deeply-nested-array"),
        pytest.param(base64.b64encode(b'{"a":' * 3000 + b"1" + b"}" * 3000).decode(), "data: ", id="deeply-nested-object"),
        pytest.param(
            base64.b64encode(b'{"a":' * 100 + b"1" + b"}" * 100).decode(), "data: nested deeper than the limit of 32", id="over-max-depth"
        ),
        pytest.param(base64.b64encode(b'{"properties": {"a.b": 1}}').decode(), "data: name 'a.b'", id="dotted-name"),
        pytest.param(base64.b64encode(b'{"properties": {"x": NaN}}').decode(), "data: properties.x is not a value", id="nan"),
        pytest.param(base64.b64encode(b'{"properties": {"x": 1e999}}').decode(), "data: properties.x is not a value", id="infinity"),
    ],
)
def test_bad_data_is_a_400_naming_data(segment, data, reason, caplog):
    caplog.set_level(logging.INFO, logger="pixel_wsgi")
    client, events = segment
    response = client.get(f"{SEGMENT}/track?{urlencode({'data': data})}", status=400)
    assert response.text.startswith(reason), response.text
    assert "\n" not in response.text
    assert events == []
    assert "rejected 400" in caplog.text


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        pytest.param({"userId": "u", "event": "x"}, "writeKey: required", id="no-write-key"),
        pytest.param({"writeKey": WRITE_KEY, "event": "x"}, "anonymousId", id="no-user"),
        pytest.param({"writeKey": WRITE_KEY, "userId": "u"}, "event", id="no-event"),
        pytest.param(
            {"writeKey": WRITE_KEY, "userId": "u", "event": "x", "properties": {"revenue": "lots"}},
            "properties.revenue: must be a number",
            id="typed",
        ),
    ],
)
def test_the_data_goes_through_the_same_validation(segment, call, reason):
    client, _ = segment
    response = client.get(f"{SEGMENT}/track?{urlencode({'data': segment_data(call)})}", status=400)
    assert reason in response.text


def test_a_name_inside_data_and_in_the_query_is_a_400(segment):
    client, _ = segment
    response = client.get(f"{SEGMENT}/track?{urlencode({'data': segment_data(SEGMENT_CALL), 'userId': 'other'})}", status=400)
    assert response.text == "data: userId is given both inside data and as a parameter"


def test_errors_as_pixel_of_the_source_inside_data():
    app, events = memory_app(segment_prefix=SEGMENT, errors_as_pixel=True)
    call = {"writeKey": WRITE_KEY, "event": "x"}
    response = TestApp(app).get(f"{SEGMENT}/track?{urlencode({'data': segment_data(call)})}")
    assert response.body == TRANSPARENT_GIF and "anonymousId" in response.headers["X-Pixel-Error"]


def test_the_data_form_is_only_served_under_the_segment_prefix():
    app, events = memory_app(segment_prefix=SEGMENT)
    TestApp(app).get(f"/pixel/v1/track?{urlencode({'data': segment_data(SEGMENT_CALL)})}", status=400)
    without, _ = memory_app()
    TestApp(without).get(f"{SEGMENT}/track?{urlencode({'data': segment_data(SEGMENT_CALL)})}", status=404)


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        pytest.param("v1/pixel", "segment_prefix: must start with '/'", id="relative"),
        pytest.param("/v1/pixel/", "segment_prefix: must start with '/' and not end with '/'", id="trailing-slash"),
        pytest.param("/pixel/v1", "segment_prefix: must differ from prefix", id="same-as-prefix"),
    ],
)
def test_segment_prefix_is_checked_at_start_up(prefix, message):
    with pytest.raises(ConfigError, match=message):
        memory_app(segment_prefix=prefix)
