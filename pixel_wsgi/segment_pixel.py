"""Segment's pixel API: ``?data=<base64 JSON>`` as the same parameters the query form sends.

Segment documents its pixel as ``GET /v1/pixel/track?data=<base64>`` where the data is
the JSON of a whole call, write key included. A team moving from Segment keeps its
templates by pointing them at ``segment_prefix``. The JSON is flattened into exactly
the dot-notation parameters that the query form would have sent
(``{"properties": {"revenue": 9.5}}`` → ``properties.revenue=9.5``), so both forms go
through the same limits, schemas and typing, and make the same event: JSON numbers
arrive as strings except the typed fields, as from a query (``infer_types`` on the
source types the rest).

Base64 may be standard or URL-safe, with or without padding. Other query parameters
(``sig``, a cache buster) are kept beside the data; a name given both inside the data
and in the query is a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any, Dict, List

from .config import Limits
from .errors import bad_parameter
from .parsing import is_array_index

__all__ = ["DATA", "expand_data"]

DATA = "data"
# A name that the parser would read as more than one path segment cannot come from JSON.
_UNSAFE_NAME = re.compile(r"[.\[\]\x00-\x1f\x7f]")
_BASE64_ALPHABET = re.compile(r"[A-Za-z0-9+/\-_]*={0,2}\Z")


_SURROGATE = re.compile("[\ud800-\udfff]")


def decode_data(text: str) -> Any:
    """Standard or URL-safe base64 (padding optional) of UTF-8 JSON; a 400 ``data: ...`` otherwise."""
    # A '+' of standard base64 arrives as a space when the URL was not percent-encoded.
    text = text.strip().replace(" ", "+")
    if not _BASE64_ALPHABET.match(text):
        raise bad_parameter("data: not base64")
    text = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise bad_parameter("data: not base64") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad_parameter("data: not UTF-8 JSON") from None
    except RecursionError:
        raise bad_parameter("data: JSON nested too deeply") from None
    except ValueError as exc:
        raise bad_parameter(f"data: not JSON ({exc})") from None


def expand_data(grouped: Dict[str, List[str]], limits: Limits) -> Dict[str, List[str]]:
    """Replace the ``data`` parameter of ``grouped`` by the parameters its JSON holds."""
    values = grouped.get(DATA)
    if not values:
        return grouped
    if len(values) > 1:
        raise bad_parameter("data: given more than once; a single value is required")
    document = decode_data(values[0])
    if not isinstance(document, dict):
        raise bad_parameter("data: must be a JSON object")
    expanded: Dict[str, List[str]] = {}
    _flatten("", document, expanded, limits, 0)
    for name, extra in grouped.items():
        if name == DATA:
            continue
        if name in expanded:
            raise bad_parameter(f"data: {name} is given both inside data and as a parameter")
        expanded[name] = extra
    # Counted as the query form counts them: one per value (an array of 10,000 is 10,000).
    count = sum(len(values) for values in expanded.values())
    if count > limits.max_params:
        raise bad_parameter(f"too many parameters: {count}, the limit is {limits.max_params}")
    return expanded


def _flatten(path: str, value: Any, out: Dict[str, List[str]], limits: Limits, depth: int) -> None:
    if depth > limits.max_depth:
        raise bad_parameter(f"data: nested deeper than the limit of {limits.max_depth} at {path}")
    if isinstance(value, dict):
        for name, item in value.items():
            _text(name, path)
            if not name or is_array_index(name) or _UNSAFE_NAME.search(name):
                raise bad_parameter(f"data: name {name!r} at {path or 'the top'} cannot be a parameter name")
            key = f"{path}.{name}" if path else name
            if len(key) > limits.max_key_length:
                raise bad_parameter(f"data: parameter name longer than the limit of {limits.max_key_length} characters: {key[:40]!r}…")
            _flatten(key, item, out, limits, depth + 1)
    elif isinstance(value, list):
        if not path:
            raise bad_parameter("data: must be a JSON object")
        if all(not isinstance(item, (dict, list)) for item in value):
            scalars = [_scalar(item, path) for item in value if item is not None]
            if scalars:
                out[f"{path}[]"] = scalars
        else:
            for index, item in enumerate(value):
                _flatten(f"{path}[{index}]", item, out, limits, depth + 1)
    elif value is not None:
        out[path] = [_scalar(value, path)]


def _text(value: str, path: str) -> str:
    """JSON may hold lone UTF-16 surrogates (``"\\ud800"``); a query string cannot, and
    no destination can encode them: refused here rather than failing every delivery."""
    if _SURROGATE.search(value):
        raise bad_parameter(f"data: {path or 'a name'} holds a lone UTF-16 surrogate, which is not text")
    return value


def _scalar(value: Any, path: str) -> str:
    """A JSON scalar as the text a query string would carry."""
    if isinstance(value, str):
        return _text(value, path)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return json.dumps(value)
    raise bad_parameter(f"data: {path} is not a value a pixel can carry")
