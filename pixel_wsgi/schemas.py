"""marshmallow schemas for the page and track events: validation and typing.

The query parser hands over strings, lists and dicts; these schemas decide which of
them may be lists, which are numbers, what is required, and say so with the
parameter's name. The schemas are flat on purpose: one ``Schema.load`` per event, with
``properties`` and ``context`` as custom fields, costs a fifth of nested schemas.
Instances are built once by ``EventSchemas`` and shared by every request (``load`` keeps
no state on the instance).
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any, Mapping

from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing, validates_schema

# These names are numbers or integers wherever they appear directly under `properties`
# or `context.screen` (the ecommerce and screen fields every analytics destination
# reads as numbers); everything else is a string.
NUMBER_PROPERTIES = frozenset({"revenue", "value", "price", "total", "subtotal", "tax", "shipping", "discount"})
INTEGER_PROPERTIES = frozenset({"quantity"})
INTEGER_SCREEN_FIELDS = frozenset({"width", "height", "innerWidth", "innerHeight"})
NUMBER_SCREEN_FIELDS = frozenset({"density"})

MAX_MESSAGE_ID_LENGTH = 128
# Integers beyond 2**53 lose digits in JavaScript destinations: an order number like
# "12345678901234567890" stays a string even with infer_types.
MAX_SAFE_INTEGER = 2**53

# ASCII digits only: \d alone also matches "１" (fullwidth) and "٣" (Arabic-Indic),
# which int() and float() would then read as numbers.
_INTEGER = re.compile(r"[+-]?\d+\Z", re.ASCII)
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z", re.ASCII)
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?\Z", re.ASCII)
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+\Z")
_ISO_8601 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"(?:[Zz]|[+-](\d{2}):?(\d{2}))?\Z"
)
_INFERRED_WORDS: Mapping[str, Any] = {"true": True, "false": False, "null": None}


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _single(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        raise ValidationError("given more than once; a single value is required")
    raise ValidationError("must be a single value, not a nested object or array")


def to_number(value: Any) -> int | float | None:
    """A decimal string as a JSON number; ``""`` is ``None`` (the field is left out)."""
    text = _single(value)
    if text == "":
        return None
    if _INTEGER.match(text):
        try:
            return int(text)
        except ValueError:  # more digits than Python converts
            pass
    elif _DECIMAL.match(text):
        number = float(text)
        if math.isfinite(number):
            return number
    raise ValidationError(f"must be a number, not {_describe(text)}")


def to_integer(value: Any) -> int | None:
    text = _single(value)
    if text == "":
        return None
    if _INTEGER.match(text):
        try:
            return int(text)
        except ValueError:
            pass
    raise ValidationError(f"must be an integer, not {_describe(text)}")


def infer_type(value: Any) -> Any:
    """``"42"`` → 42, ``"true"`` → True, recursively; only values that round-trip unchanged."""
    if isinstance(value, str):
        if value in _INFERRED_WORDS:
            return _INFERRED_WORDS[value]
        if _JSON_NUMBER.match(value):
            try:
                number = json.loads(value)
            except ValueError:  # an integer over Python's 4300-digit limit: far beyond 2**53 anyway
                return value
            if json.dumps(number) == value and (not isinstance(number, int) or abs(number) <= MAX_SAFE_INTEGER):
                return number
        return value
    if isinstance(value, list):
        return [infer_type(item) for item in value]
    if isinstance(value, dict):
        return {key: infer_type(item) for key, item in value.items()}
    return value


class PixelField(fields.Field):  # type: ignore[type-arg]  # generic only in marshmallow 4
    """Base of the event's fields: they validate in ``_deserialize`` and take no ``validate=``."""

    def _validate(self, value: Any) -> None:
        # marshmallow builds an ``And(*self.validators)`` on every call, even for an
        # empty list: ~1 µs per field per event. Skip it when there is nothing to run.
        if self.validators:
            super()._validate(value)


class SingleString(PixelField):
    """One string value; an empty one becomes ``empty`` (by default the field is left out).

    A field left out returns marshmallow's ``missing``, which ``load`` does not store:
    cheaper than storing ``None`` and dropping it afterwards in a ``post_load``.
    """

    def __init__(self, *, empty: Any = missing, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.empty = empty

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        text = _single(value)
        return text if text else self.empty


class AnonymousIdField(SingleString):
    """AMP's ``CLIENT_ID(...)`` can arrive wrapped in double quotes: ``"amp-abc"``."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        text = _single(value)
        if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
            text = text[1:-1]
        return text or missing


class EventNameField(PixelField):
    """A track event's name: required, and an empty ``event=`` is no name either."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        text = _single(value)
        if not text:
            raise ValidationError("required, must not be empty")
        return text


class MessageIdField(PixelField):
    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        text = _single(value)
        if not text:
            return missing
        if len(text) > MAX_MESSAGE_ID_LENGTH or not _PRINTABLE_ASCII.match(text):
            raise ValidationError(f"must be 1 to {MAX_MESSAGE_ID_LENGTH} printable ASCII characters")
        return text


class TimestampField(PixelField):
    """An ISO 8601 date and time, kept as the client wrote it once it is known to be valid."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        text = _single(value)
        if not text:
            return missing
        match = _ISO_8601.match(text)
        if match:
            year, month, day, hour, minute, second, _, tz_hour, tz_minute = match.groups()
            try:
                datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
                if tz_hour is None or (int(tz_hour) <= 23 and int(tz_minute) <= 59):
                    return text
            except ValueError:
                pass
        raise ValidationError(f"must be an ISO 8601 date and time such as 2024-01-31T12:00:00.000Z, not {_describe(text)}")


def _object(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise ValidationError("must be given as nested parameters (name.key=value), not as a value")


class PropertiesField(PixelField):
    """Open ``properties``: a few commerce names are numbers; ``infer_types`` types the rest."""

    def __init__(self, *, infer_types: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.infer_types = infer_types

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        properties = _object(value)
        result: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for key, item in properties.items():
            try:
                if key in NUMBER_PROPERTIES:
                    item = to_number(item)
                elif key in INTEGER_PROPERTIES:
                    item = to_integer(item)
                elif self.infer_types:
                    item = infer_type(item)
                    result[key] = item
                    continue
            except ValidationError as error:
                errors[key] = error.messages
                continue
            if item is not None:
                result[key] = item
        if errors:
            raise ValidationError(errors)
        return result


class ContextField(PixelField):
    """Open ``context``: any nested key; the screen's sizes are numbers."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        context = _object(value)
        screen = context.get("screen")
        if isinstance(screen, dict):
            typed: dict[str, Any] = {}
            errors: dict[str, Any] = {}
            for key, item in screen.items():
                try:
                    if key in INTEGER_SCREEN_FIELDS:
                        item = to_integer(item)
                    elif key in NUMBER_SCREEN_FIELDS:
                        item = to_number(item)
                except ValidationError as error:
                    errors[key] = error.messages
                    continue
                if item is not None:
                    typed[key] = item
            if errors:
                raise ValidationError({"screen": errors})
            context = {**context, "screen": typed}
        return context


class EventSchema(Schema):
    """Fields shared by page and track. Keys are the event's own (camelCase) names."""

    class Meta:
        unknown = EXCLUDE

    anonymousId = AnonymousIdField()
    userId = SingleString()
    messageId = MessageIdField()
    timestamp = TimestampField()
    originalTimestamp = TimestampField()
    sentAt = TimestampField()
    channel = SingleString()
    # `context` is an attribute of marshmallow 3's Schema: keep the field's Python
    # name apart from the key it reads and writes.
    context_field = ContextField(data_key="context", attribute="context")

    @validates_schema
    def _require_an_identity(self, data: Mapping[str, Any], **kwargs: Any) -> None:
        if not data.get("anonymousId") and not data.get("userId"):
            raise ValidationError("anonymousId or userId is required (at least one, not empty)")


class PageSchema(EventSchema):
    # `name=` present but empty names the page "Unknown Page", as RudderStack's pixel does.
    name = SingleString(empty="Unknown Page")
    category = SingleString()


class TrackSchema(EventSchema):
    event = EventNameField(required=True, error_messages={"required": "required"})
    name = SingleString()


PAGE_FIELDS = frozenset(PageSchema._declared_fields) - {"context_field"} | {"context", "properties"}
TRACK_FIELDS = frozenset(TrackSchema._declared_fields) - {"context_field"} | {"context", "properties"}


# Schemas restricted to the fields a request sends, kept per set of field names. A pixel
# template sends the same few names on every request, so a handful of entries serve
# nearly all traffic; the bound caps memory when clients vary (at most 2**11 sets exist).
MAX_CACHED_SCHEMAS = 256


class EventSchemas:
    """The schema classes (page/track × infer_types), built once at start-up.

    marshmallow's ``load`` visits every declared field, present or not, at ~1.5 µs
    each; an event usually carries five of the eleven. So ``load`` uses an instance
    built with ``only=`` the fields present (plus the required ones, so that a missing
    ``event`` is still reported), cached per set of names. Validation, typing and error
    messages are the full schema's: ``only`` just skips fields with nothing to load.
    """

    def __init__(self) -> None:
        self._classes = {(event_type, infer): self._build(event_type, infer) for event_type in ("page", "track") for infer in (False, True)}
        self.fields = {"page": PAGE_FIELDS, "track": TRACK_FIELDS}
        self._required = {
            event_type: frozenset(name for name, field in self._classes[(event_type, False)]._declared_fields.items() if field.required)
            for event_type in ("page", "track")
        }
        # data key (what the query says) -> attribute name (what `only` takes)
        self._field_names = {
            key: name
            for schema_class in self._classes.values()
            for name, field in schema_class._declared_fields.items()
            for key in [field.data_key or name]
        }
        self._by_names: dict[tuple[str, bool, frozenset[str]], Schema] = {}

    @staticmethod
    def _build(event_type: str, infer_types: bool) -> type[Schema]:
        base = PageSchema if event_type == "page" else TrackSchema
        return type(
            f"{base.__name__}{'Inferred' if infer_types else ''}",
            (base,),
            {"properties": PropertiesField(infer_types=infer_types)},
        )

    def schema_for(self, event_type: str, names: frozenset[str], *, infer_types: bool) -> Schema:
        """The schema that loads exactly the known top-level ``names`` of one event."""
        key = (event_type, infer_types, names)
        schema = self._by_names.get(key)
        if schema is None:
            # Names the schema does not know are excluded by it (unknown = EXCLUDE) anyway.
            known = names & self.fields[event_type]
            wanted = self._required[event_type].union(self._field_names[name] for name in known)
            schema_class = self._classes[(event_type, infer_types)]
            # In declared order, so that events keep the full schema's key order.
            schema = schema_class(only=[name for name in schema_class._declared_fields if name in wanted])
            if len(self._by_names) >= MAX_CACHED_SCHEMAS:
                self._by_names.clear()
            self._by_names[key] = schema
        return schema

    def load(self, event_type: str, data: Mapping[str, Any], *, infer_types: bool) -> dict[str, Any]:
        """``data``'s keys must be known fields of ``event_type`` (see ``fields``)."""
        schema = self.schema_for(event_type, frozenset(data), infer_types=infer_types)
        return schema.load(data)  # type: ignore[no-any-return]
