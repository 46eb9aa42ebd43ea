"""Property: any nested structure, flattened to dot/bracket parameters and URL-encoded,
parses back to the same structure."""

from __future__ import annotations

from typing import Any, Iterator
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webtest import TestApp

from pixel_wsgi.schemas import INTEGER_PROPERTIES, NUMBER_PROPERTIES
from pixel_wsgi.testing import memory_app
from tests.conftest import WRITE_KEY

# Names that cannot stand for themselves in a path: dots and brackets are syntax, an
# all-digit name is an index, control characters are refused in keys.
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=".[]"),
    min_size=1,
    max_size=12,
).filter(lambda name: not name.isdigit())
values = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
structures = st.recursive(
    values,
    lambda children: st.lists(children, min_size=1, max_size=4) | st.dictionaries(names, children, min_size=1, max_size=4),
    max_leaves=12,
)
# Typed names are numbers by design, and the server owns context.ip, context.pixel
# (who fetched the pixel) and context.screen's sizes.
properties = st.dictionaries(names.filter(lambda n: n not in NUMBER_PROPERTIES | INTEGER_PROPERTIES), structures, min_size=1, max_size=5)
contexts = st.dictionaries(names.filter(lambda n: n not in {"ip", "pixel", "screen"}), structures, min_size=1, max_size=5)


def flatten(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(f"{prefix}.{key}", item)
    elif isinstance(value, list):
        if all(isinstance(item, str) for item in value):
            for item in value:
                yield f"{prefix}[]", item
        else:
            for index, item in enumerate(value):
                yield from flatten(f"{prefix}[{index}]", item)
    else:
        yield prefix, value


def encode(pairs: Iterator[tuple[str, str]]) -> str:
    return "&".join(f"{quote(key, safe='.[]')}={quote(value, safe='')}" for key, value in pairs)


# One app for every example: building one per example would dominate the run time.
APP, EVENTS = memory_app(WRITE_KEY)
CLIENT = TestApp(APP)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(properties=properties, context=contexts)
def test_flattened_structures_parse_back_to_themselves(properties, context):
    EVENTS.clear()
    query = encode(flatten("properties", properties)) + "&" + encode(flatten("context", context))
    CLIENT.get(f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=a&event=E&{query}", status=200)
    [event] = EVENTS
    assert event["properties"] == properties
    received_context = dict(event["context"])
    received_context.pop("ip", None)
    if "library" not in context:
        received_context.pop("library")
    assert received_context == context
