"""The caches and shortcuts of the hot path change nothing the mapping rules say.

Each shortcut has a slow twin that it must agree with: ``str(uuid.uuid4())``, the full
marshmallow schema, a cold ``lru_cache``, the werkzeug ``Map``.
"""

from __future__ import annotations

import os
import re
import threading
import uuid

import pytest
from marshmallow import ValidationError
from webtest import TestApp

from pixel_wsgi import parsing
from pixel_wsgi.errors import RequestRejected
from pixel_wsgi.event import new_message_id, utc_timestamp
from pixel_wsgi.schemas import MAX_CACHED_SCHEMAS, EventSchemas
from pixel_wsgi.testing import memory_app
from tests.conftest import WRITE_KEY

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


def test_new_message_id_is_a_random_uuid4_string():
    ids = {new_message_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        assert UUID4.match(text), text
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def test_message_ids_from_many_threads_are_all_different():
    """Each thread draws its own random bytes: no two threads hand out the same id."""
    results: list[list[str]] = []

    def draw() -> None:
        results.append([new_message_id() for _ in range(1000)])

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [message_id for batch in results for message_id in batch]
    assert len(set(ids)) == len(ids) == 8000


# Python 3.12+ warns about fork() in a process with threads; this child only draws ids and exits.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_does_not_reuse_the_parents_random_bytes():
    """gunicorn forks after the app is built: the child's ids are its own, not the parent's next ones."""
    new_message_id()  # the parent has drawn a buffer and used one id of it
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        os.write(write_end, "\n".join(new_message_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_ids = pipe.read().decode().split("\n")
    os.waitpid(child, 0)
    parent_ids = [new_message_id() for _ in range(10)]
    assert len(child_ids) == 10
    assert not set(child_ids) & set(parent_ids)


def test_utc_timestamp_across_seconds_and_back():
    """Pins the per-second cache: a later call for an earlier second gets that second."""
    assert utc_timestamp(1706702400.999) == "2024-01-31T12:00:00.999Z"
    assert utc_timestamp(1706702401.0) == "2024-01-31T12:00:01.000Z"
    assert utc_timestamp(1706702402.5) == "2024-01-31T12:00:02.500Z"
    assert utc_timestamp(1706702400.25) == "2024-01-31T12:00:00.250Z"


def full_load(schemas: EventSchemas, event_type: str, data: dict, infer_types: bool = False) -> dict:
    """What the full schema (every declared field, no ``only``) makes of ``data``."""
    return schemas._classes[(event_type, infer_types)]().load(data)


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        pytest.param("track", {"anonymousId": "a", "event": "E"}, id="track-minimal"),
        pytest.param(
            "track",
            {"userId": "u", "event": "E", "properties": {"revenue": "9.5", "quantity": "2"}, "channel": "email"},
            id="track-typed",
        ),
        pytest.param("page", {"anonymousId": '"amp-1"', "name": "", "context": {"screen": {"width": "10"}}}, id="page"),
        pytest.param("page", {"anonymousId": "a", "messageId": "m-1", "sentAt": "2024-01-31T12:00:00Z"}, id="page-ids"),
    ],
)
def test_schema_per_field_set_loads_like_the_full_schema(event_type, data):
    schemas = EventSchemas()
    loaded = schemas.load(event_type, data, infer_types=False)
    expected = full_load(schemas, event_type, data)
    assert loaded == expected
    assert list(loaded) == list(expected)  # the same key order in the event's JSON


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        pytest.param("track", {"anonymousId": "a"}, id="event-missing-is-still-required"),
        pytest.param("track", {"anonymousId": "a", "event": ""}, id="event-empty"),
        pytest.param("page", {"name": "Home"}, id="no-identity"),
        pytest.param("track", {"userId": "u", "event": "E", "properties": {"revenue": "lots"}}, id="bad-number"),
        pytest.param("page", {"anonymousId": ["a", "b"]}, id="repeated-single-value"),
    ],
)
def test_schema_per_field_set_rejects_like_the_full_schema(event_type, data):
    schemas = EventSchemas()
    with pytest.raises(ValidationError) as cached:
        schemas.load(event_type, data, infer_types=False)
    with pytest.raises(ValidationError) as full:
        full_load(schemas, event_type, data)
    assert cached.value.messages == full.value.messages


def test_schema_cache_is_bounded():
    schemas = EventSchemas()
    values = {
        "userId": "u",
        "messageId": "m",
        "timestamp": "2024-01-31T12:00:00Z",
        "originalTimestamp": "2024-01-31T12:00:00Z",
        "sentAt": "2024-01-31T12:00:00Z",
        "channel": "email",
        "name": "Home",
        "category": "Docs",
        "properties": {"k": "v"},
    }
    names = list(values)
    for number in range(2 ** len(names)):  # 512 sets of fields, each loaded once
        data = {"anonymousId": "a", **{name: values[name] for bit, name in enumerate(names) if number >> bit & 1}}
        assert schemas.load("page", data, infer_types=False) == full_load(schemas, "page", data)
    assert 0 < len(schemas._by_names) <= MAX_CACHED_SCHEMAS


def test_an_error_is_not_cached_as_an_answer():
    """A refused key is refused every time, and a good key still works after it."""
    app, events = memory_app(WRITE_KEY, unknown_params="keep")
    client = TestApp(app)
    base = f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=a&event=E"
    for _ in range(2):
        assert "empty segment" in client.get(base + "&properties..x=1", status=400).text
        assert "must start with a name" in client.get(base + "&0.x=1", status=400).text
        client.get(base + "&properties.x=1", status=200)
    assert [event["properties"] for event in events] == [{"x": "1"}, {"x": "1"}]
    app.close()


def test_remembered_names_and_values_decode_like_the_first_time():
    """The second request with the same escapes decodes to the same text; a refusal stays a refusal."""
    app, events = memory_app(WRITE_KEY)
    client = TestApp(app)
    query = f"writeKey={WRITE_KEY}&anonymousId=a&name=Caf%C3%A9+Menu&context.page.url=https%3A%2F%2Fx.example%2F%3Fq%3D1"
    for _ in range(3):
        client.get(f"/pixel/v1/page?{query}", status=200)
        assert "not valid UTF-8" in client.get(f"/pixel/v1/page?{query}&properties.bad=%FF", status=400).text
    assert {(event["name"], event["context"]["page"]["url"]) for event in events} == {("Café Menu", "https://x.example/?q=1")}
    assert len(events) == 3
    app.close()


def test_a_remembered_name_is_held_to_each_apps_own_length_limit():
    """Names are remembered per process, their length limit is per app: both orders refuse the long name."""
    name = "properties." + "n" * 40
    strict, _ = memory_app(WRITE_KEY, limits={"max_key_length": 32})
    lenient, events = memory_app(WRITE_KEY, limits={"max_key_length": 64})
    query = f"/pixel/v1/page?writeKey={WRITE_KEY}&anonymousId=a&{name}=1"
    for _ in range(2):
        TestApp(lenient).get(query, status=200)
        assert "longer than the limit of 32" in TestApp(strict).get(query, status=400).text
    assert [event["properties"] for event in events] == [{"n" * 40: "1"}] * 2
    strict.close()
    lenient.close()


def test_remembered_texts_are_bounded_whatever_clients_send():
    """Thousands of different escaped values, and long ones, never grow the tables past their bound."""
    limits = memory_app(WRITE_KEY)[0].config.limits
    for number in range(3 * parsing.MAX_REMEMBERED_TEXTS):
        grouped = parsing.split_query(f"k%5F{number}=v%20{number}&long={'%41' * 300}{number}", limits)
        assert grouped == {f"k_{number}": [f"v {number}"], "long": ["A" * 300 + str(number)]}
        assert len(parsing._decoded_values) <= parsing.MAX_REMEMBERED_TEXTS
        assert len(parsing._decoded_keys) <= parsing.MAX_REMEMBERED_TEXTS
    assert all(len(raw) <= parsing.MAX_REMEMBERED_LENGTH for raw in parsing._decoded_values)
    with pytest.raises(RequestRejected, match="control character"):
        parsing.split_query("k%01=1", limits)
    assert "k%01" not in parsing._decoded_keys


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/pixel/v1/track", 400, id="get-exact-path"),
        pytest.param("HEAD", "/pixel/v1/page", 200, id="head-exact-path"),
        pytest.param("POST", "/pixel/v1/track", 405, id="post-goes-through-the-map"),
        pytest.param("GET", "/pixel/v1/track/", 404, id="trailing-slash"),
        pytest.param("GET", "/pixel/v1//track", 404, id="double-slash"),
    ],
)
def test_exact_path_shortcut_agrees_with_the_map(method, path, status):
    app, _ = memory_app(WRITE_KEY)
    response = TestApp(app).request(path, method=method, status=status, expect_errors=True)
    assert response.status_int == status
    app.close()
