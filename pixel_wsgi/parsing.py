"""Query string → nested dict: decoding, limits, dot/bracket paths, arrays, conflicts.

This module knows nothing of events; it turns ``a.b[0].c=1`` into
``{"a": {"b": [{"c": "1"}]}}`` and refuses, with a one-line reason naming the
parameter, anything ambiguous or over a limit. Validation and typing are the
schemas' job.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Dict, List, Tuple, Union
from urllib.parse import unquote_to_bytes

from .config import Limits
from .errors import RequestRejected, bad_parameter

Segment = Union[str, int]
Path = Tuple[Segment, ...]
# A trailing ``[]``: the parameter's values always form a list.
APPEND = "[]"

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
# Index strings longer than this cannot be under any sane limit; checked before int()
# so that a 5,000-digit "index" costs nothing.
_MAX_INDEX_DIGITS = 6


def split_query(query: str, limits: Limits) -> Dict[str, List[str]]:
    """Decode a raw ``QUERY_STRING`` into ``{key: [values...]}`` in first-seen order.

    ``query`` is the WSGI native string: bytes as latin-1. ``+`` and percent-escapes
    are decoded, then the bytes must be UTF-8. Empty pieces (``a=1&&b=2``) are skipped.
    """
    if len(query) > limits.max_query_length:
        raise RequestRejected(414, f"query string longer than the limit of {limits.max_query_length} bytes")
    grouped: Dict[str, List[str]] = {}
    if not query:
        return grouped
    pieces = query.split("&")
    if len(pieces) > limits.max_params:
        count = sum(1 for piece in pieces if piece)
        if count > limits.max_params:
            raise bad_parameter(f"too many parameters: {count}, the limit is {limits.max_params}")
    max_key_length = limits.max_key_length
    decoded_keys = _decoded_keys
    decoded_values = _decoded_values
    for piece in pieces:
        if not piece:
            continue
        raw_key, _, raw_value = piece.partition("=")
        key = decoded_keys.get(raw_key)
        if key is None:
            key = _decode_key(raw_key)
            if len(raw_key) <= MAX_REMEMBERED_LENGTH:
                _remember(decoded_keys, raw_key, key)
        if len(key) > max_key_length:
            raise bad_parameter(f"parameter name longer than the limit of {max_key_length} characters: {key[:40]!r}…")
        # Most values are plain ASCII: nothing to decode, nothing to look up.
        if "%" in raw_value or "+" in raw_value or not raw_value.isascii():
            value = decoded_values.get(raw_value)
            if value is None:
                value = _decode(raw_value, key)
                if len(raw_value) <= MAX_REMEMBERED_LENGTH:
                    _remember(decoded_values, raw_value, value)
        else:
            value = raw_value
        values = grouped.get(key)
        if values is None:
            grouped[key] = [value]
        else:
            values.append(value)
    return grouped


# Decoded parameter names and escaped values, by their text as sent. A pixel template
# sends the same names on every request, and most escaped values repeat as well (a
# page's URL, path and title, a campaign's name, an event name with spaces): a lookup
# costs a tenth of decoding one. Only text that decoded without error is kept; each
# table is emptied when it reaches MAX_REMEMBERED_TEXTS entries, and text longer than
# MAX_REMEMBERED_LENGTH (rarely repeated) is never kept, which caps the memory at a
# few megabytes whatever clients send.
MAX_REMEMBERED_TEXTS = 4096
MAX_REMEMBERED_LENGTH = 200
_decoded_keys: Dict[str, str] = {}
_decoded_values: Dict[str, str] = {}


def _remember(table: Dict[str, str], raw: str, decoded: str) -> None:
    if len(table) >= MAX_REMEMBERED_TEXTS:
        table.clear()
    table[raw] = decoded


def _decode_key(raw_key: str) -> str:
    """A parameter name, decoded and checked (but for its length, which is per app)."""
    key = _decode(raw_key, None)
    if _CONTROL_CHARACTER.search(key):
        raise bad_parameter(f"parameter name with a control character: {key!r}")
    if not key:
        raise bad_parameter("parameter with an empty name")
    return key


def _decode(raw: str, key: str | None) -> str:
    if "+" in raw:
        raw = raw.replace("+", " ")
    if "%" not in raw and raw.isascii():
        return raw
    try:
        # The WSGI string holds the request's bytes as latin-1: back to bytes first.
        data = raw.encode("latin-1")
    except UnicodeEncodeError:
        # Not a WSGI native string (a caller passed real text): its characters are
        # already decoded, its escapes not yet. surrogatepass: a lone surrogate becomes
        # bytes that fail the UTF-8 check below, a 400, instead of an exception here.
        data = raw.encode("utf-8", "surrogatepass")
    try:
        return unquote_to_bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        if key is None:
            raise bad_parameter(f"parameter name is not valid UTF-8: {raw[:40]!r}") from None
        raise bad_parameter(f"{key}: value is not valid UTF-8") from None


@lru_cache(maxsize=4096)
def top_level_name(key: str) -> str:
    """The first segment of a key, before any ``.`` or ``[`` (no validation; cached)."""
    end = len(key)
    dot = key.find(".")
    if dot != -1:
        end = dot
    bracket = key.find("[", 0, end)
    if bracket != -1:
        end = bracket
    return key[:end]


@lru_cache(maxsize=4096)
def parse_key(key: str, max_depth: int, max_index: int) -> Path:
    """``properties.products[0].sku`` → ``("properties", "products", 0, "sku")``.

    Cached: a pixel template sends the same few dozen keys on every request.
    """
    segments: List[Segment] = []
    for part in key.split("."):
        bracket = part.find("[")
        name = part if bracket == -1 else part[:bracket]
        if name:
            segments.append(_index(name, key, max_index) if is_array_index(name) else name)
        elif bracket == -1 or not segments:
            raise bad_parameter(f"{key}: empty segment in the parameter name")
        if bracket != -1:
            rest = part[bracket:]
            position = 0
            for match in _BRACKETED.finditer(rest):
                if match.start() != position:
                    break
                position = match.end()
                inner = match.group(1)
                if inner == "":
                    segments.append(APPEND)
                elif is_array_index(inner):
                    segments.append(_index(inner, key, max_index))
                else:  # a name: the key was split on dots first, so it holds none
                    segments.append(inner)
            if position != len(rest):
                raise bad_parameter(f"{key}: malformed brackets in the parameter name")
    if APPEND in segments[:-1]:
        raise bad_parameter(f"{key}: '[]' may only end a parameter name")
    depth = len(segments) - (segments[-1] == APPEND)
    if depth > max_depth:
        raise bad_parameter(f"{key}: nested deeper than the limit of {max_depth} levels")
    return tuple(segments)


def is_array_index(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` is also true of "²" (which ``int`` refuses: a
    500) and of "１" (fullwidth, which it reads as 1): those are names, like any letter."""
    return text.isascii() and text.isdigit()


def _index(text: str, key: str, max_index: int) -> int:
    if len(text) > _MAX_INDEX_DIGITS or int(text) > max_index:
        raise bad_parameter(f"{key}: array index {text[:12]} is over the limit of {max_index}")
    return int(text)


class _Indexed(dict):  # type: ignore[type-arg]
    """An array under construction: index → item, checked and turned into a list at the end."""


# One step of a key's way down: the segment, the kind of container it must hold (a
# dict, or an array under construction), and the path so far (for error messages).
_Step = Tuple[Segment, type, Path]


@lru_cache(maxsize=4096)
def _nest_plan(key: str, max_depth: int, max_index: int) -> Tuple[Tuple[_Step, ...], Segment, Path, bool]:
    """What ``nest`` needs of a key, worked out once per key rather than per request.

    The steps down to the last segment, the last segment, the whole path without a
    trailing ``[]``, and whether it had one (its values then always form a list).
    """
    path = parse_key(key, max_depth, max_index)
    if not isinstance(path[0], str):
        raise bad_parameter(f"{key}: a parameter name must start with a name, not an index")
    append = path[-1] == APPEND
    if append:
        path = path[:-1]
    steps = tuple(
        (path[position], _Indexed if isinstance(path[position + 1], int) else dict, path[: position + 1])
        for position in range(len(path) - 1)
    )
    return steps, path[-1], path, append


@lru_cache(maxsize=256)
def _nest_plans(keys: Tuple[str, ...], max_depth: int, max_index: int) -> Tuple[Tuple[Tuple[_Step, ...], Segment, Path, bool], ...]:
    """The plans of a whole list of keys: a pixel template sends the same keys in the same
    order on every request, so one lookup stands for one per key."""
    return tuple(_nest_plan(key, max_depth, max_index) for key in keys)


def nest(grouped: Dict[str, List[str]], limits: Limits, keys: Tuple[str, ...] | None = None) -> Dict[str, Any]:
    """Build the nested structure of ``keys`` (by default all) of ``grouped``, whose keys
    must already have passed ``split_query``."""
    if keys is None:
        keys = tuple(grouped)
    root: Dict[str, Any] = {}
    arrays: List[Tuple[Any, Segment, _Indexed, Path]] = []
    plans = _nest_plans(keys, limits.max_depth, limits.max_array_index)
    for key, (steps, last, path, append) in zip(keys, plans):
        values = grouped[key]
        if append:
            value: Any = list(values)
        else:
            value = values[0] if len(values) == 1 else list(values)
        container: Any = root
        for segment, kind, prefix in steps:
            child: Any = container.get(segment)
            if child is None:
                child = container[segment] = kind()
                if kind is _Indexed:
                    arrays.append((container, segment, child, prefix))
            elif type(child) is not kind:  # a value, or an object where an array is wanted
                raise _conflict(key, prefix, keys, limits)
            container = child
        if last in container:
            raise _conflict(key, path, keys, limits)
        container[last] = value
    # Innermost arrays were registered last: finishing them first lets each parent
    # array collect finished lists.
    for parent, segment, indexed, path in reversed(arrays):
        count = len(indexed)
        if max(indexed) != count - 1:
            missing = next(i for i in range(count) if i not in indexed)
            raise bad_parameter(f"{format_path(path)}: array indexes must be contiguous from 0 (index {missing} is missing)")
        parent[segment] = [indexed[i] for i in range(count)]
    return root


def _conflict(key: str, path: Path, keys: Tuple[str, ...], limits: Limits) -> RequestRejected:
    """Name both parameters that claim ``path`` for different kinds of value."""
    for other in keys:
        if other == key:
            break  # only the keys before this one are in the structure so far
        other_path = parse_key(other, limits.max_depth, limits.max_array_index)
        trimmed = other_path[:-1] if other_path[-1] == APPEND else other_path
        if trimmed[: len(path)] == path or path[: len(trimmed)] == trimmed:
            return bad_parameter(
                f"conflicting parameters {other!r} and {key!r}: {format_path(path)} cannot be both a value and a nested object or array"
            )
    return bad_parameter(f"{key}: conflicts with another parameter")


def format_path(path: Path) -> str:
    """``("properties", "products", 0, "sku")`` → ``properties.products[0].sku``."""
    text = ""
    for segment in path:
        if isinstance(segment, int):
            text += f"[{segment}]"
        elif segment == APPEND:
            text += "[]"
        else:
            text += f".{segment}" if text else segment
    return text
