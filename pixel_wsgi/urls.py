"""``pixel_url()``: build a pixel URL for an email template or an ``<img>`` tag.

The URL it returns is the inverse of the app's query parsing: dots for objects,
``[]`` for lists of scalars, ``[0]`` for lists of objects, every name and value
percent-encoded. What goes in comes back as the same event, with two differences the
server makes on purpose: values arrive as strings, except the typed fields
(``properties.revenue``, ``context.screen.width``, …), which arrive as numbers.

Whatever the parser could not read back the same way is refused here with a
``ValueError``, at the time the template is rendered, rather than becoming a 400 when
a reader opens the email: names with ``.``, ``[`` or ``]``, names that are all digits
(they would be array indexes), empty names, and typed fields that are not numbers.

Call it once per recipient, with real values: a mail service's merge tags
(``{{user_id}}``) would be percent-encoded and never substituted.

``type="click"`` builds a click URL (``{base}/click?url=...``) that records a
``track`` event and redirects to ``url``. ``signing_secret=`` adds ``sig`` (and, with
``expires_in=``, ``exp``) as ``pixel_wsgi.signing`` defines them, for sources that
require signed URLs; a signed click URL may redirect to any http(s) host.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any, Iterator, List, Mapping, Tuple
from urllib.parse import quote

from marshmallow import ValidationError

from .parsing import is_array_index
from .redirects import safe_location
from .schemas import (
    INTEGER_PROPERTIES,
    INTEGER_SCREEN_FIELDS,
    NUMBER_PROPERTIES,
    NUMBER_SCREEN_FIELDS,
    to_integer,
    to_number,
)
from .signing import EXPIRES, SIGNATURE, SIGNATURE_PARAMETERS, sign

__all__ = ["pixel_url"]

EVENT_TYPES = ("page", "track", "click")
# The server sets or ignores these whatever the URL says; allowing them would build a
# URL whose event differs from what the caller asked for.
RESERVED_PARAMETERS = frozenset({"writeKey", "type", "receivedAt", "integrations", "properties", "context", "url"}) | SIGNATURE_PARAMETERS
# Named keyword arguments of pixel_url: passing them through **extra would send the
# parameter twice.
NAMED_PARAMETERS = {"event": "event", "name": "name", "anonymousId": "anonymous_id", "userId": "user_id"}

_UNSAFE_NAME = re.compile(r"[.\[\]\x00-\x1f\x7f]")

Pair = Tuple[str, str]


def pixel_url(
    base_url: str,
    write_key: str,
    type: str = "page",
    *,
    event: str | None = None,
    name: str | None = None,
    anonymous_id: str | None = None,
    user_id: str | None = None,
    properties: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    url: str | None = None,
    signing_secret: str | None = None,
    expires_in: float | None = None,
    **extra: Any,
) -> str:
    """The URL of one ``page`` or ``track`` pixel, or of a ``click`` redirect to ``url``.

    ``base_url`` is the pixel prefix as the reader's mail client will reach it
    (``https://px.example.com/pixel/v1``); ``/page`` or ``/track`` is added to it.
    ``extra`` holds other top-level fields by their event names (``category``,
    ``channel``, ``messageId``, ``timestamp``) or cache busters (``cb``).

    ``type="click"`` needs ``url`` (an absolute http or https URL); ``event``
    defaults to ``Link Clicked`` on the server, and ``properties.url`` is the target.
    ``signing_secret`` signs the URL; ``expires_in`` (seconds from now, only with a
    secret) adds ``exp`` so that it is refused after that time.

    Values may be strings, numbers, booleans (sent as ``true``/``false``), lists and
    mappings. ``None``, empty lists and empty mappings are left out: a query string
    cannot say "empty". Raises ``ValueError`` for anything the server would not read
    back as the same event, ``TypeError`` for a value that has no text form.
    """
    if type not in EVENT_TYPES:
        raise ValueError(f"type must be 'page', 'track' or 'click', not {type!r}")
    if "?" in base_url or "#" in base_url:
        raise ValueError("base_url must not have a query string or fragment: the pixel's parameters are the query")
    if not write_key:
        raise ValueError("write_key is required")
    if type == "track" and not event:
        raise ValueError("event is required for a track pixel")
    if type == "click":
        if url is None or safe_location(url) is None:
            raise ValueError(f"url must be an absolute http or https URL without spaces, backslashes or user info, not {url!r}")
        if properties and "url" in properties:
            raise ValueError("properties.url of a click is its url")
    elif url is not None:
        raise ValueError("url is for click URLs (type='click')")
    if expires_in is not None and signing_secret is None:
        raise ValueError("expires_in needs signing_secret: an unsigned exp could be removed by anyone")
    if signing_secret is not None and not signing_secret:
        raise ValueError("signing_secret must not be empty")
    if type == "page" and event is not None:
        raise ValueError("event is for track pixels; a page has a name")
    if not anonymous_id and not user_id:
        raise ValueError("anonymous_id or user_id is required")
    if anonymous_id and len(anonymous_id) >= 2 and anonymous_id[0] == anonymous_id[-1] == '"':
        # The server unwraps AMP's quoted CLIENT_ID: this value would not come back as given.
        raise ValueError("anonymous_id must not be wrapped in double quotes")

    pairs: List[Pair] = [("writeKey", write_key)]
    if url is not None:
        pairs.append(("url", url))
    for parameter, value in (("event", event), ("name", name), ("anonymousId", anonymous_id), ("userId", user_id)):
        if value is not None:
            pairs.append((parameter, _scalar(value, parameter)))
    for key, value in extra.items():
        if key in NAMED_PARAMETERS:
            raise ValueError(f"pass {key} as {NAMED_PARAMETERS[key]}=")
        if key in RESERVED_PARAMETERS:
            raise ValueError(f"{key} cannot be set in a pixel URL")
        _check_name(key, key)
        pairs.extend(_flatten(key, value))
    if properties:
        _check_typed(properties, "properties", NUMBER_PROPERTIES, INTEGER_PROPERTIES)
        pairs.extend(_flatten("properties", _mapping(properties, "properties")))
    if context:
        context = _mapping(context, "context")
        if "ip" in context:
            raise ValueError("context.ip is the server's to set (from the client address); it cannot be sent")
        if "pixel" in context:
            raise ValueError("context.pixel is the server's to set (who fetched the pixel); it cannot be sent")
        screen = context.get("screen")
        if isinstance(screen, Mapping):
            _check_typed(screen, "context.screen", NUMBER_SCREEN_FIELDS, INTEGER_SCREEN_FIELDS)
        pairs.extend(_flatten("context", context))
    if signing_secret is not None:
        if expires_in is not None:
            pairs.append((EXPIRES, str(int(time.time() + expires_in))))
        pairs.append((SIGNATURE, sign(pairs, signing_secret)))
    query = "&".join(f"{quote(key, safe='.')}={quote(value, safe='')}" for key, value in pairs)
    return f"{base_url.rstrip('/')}/{type}?{query}"


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{path} must be a mapping, not {value.__class__.__name__}")
    return value


def _check_name(name: Any, path: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{path}: names must be strings, not {name.__class__.__name__}")
    if not name:
        raise ValueError(f"{path}: a name cannot be empty")
    if is_array_index(name):
        raise ValueError(f"{path}: a name cannot be all digits (it would read as an array index)")
    if _UNSAFE_NAME.search(name):
        raise ValueError(f"{path}: a name cannot contain '.', '[', ']' or control characters")


def _flatten(path: str, value: Any) -> Iterator[Pair]:
    """``("properties", {"a": [1, 2]})`` → ``properties.a[]=1``, ``properties.a[]=2``."""
    if value is None:
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_name(key, f"{path}.{key}")
            yield from _flatten(f"{path}.{key}", item)
    elif isinstance(value, (list, tuple)):
        if any(_is_empty(item) for item in value):
            # Dropping it would shift every later index; keeping it cannot be written.
            raise ValueError(f"{path}: a list item cannot be None, empty list or empty mapping")
        if all(not isinstance(item, (Mapping, list, tuple)) for item in value):
            for item in value:
                yield f"{path}[]", _scalar(item, path)
        else:
            for index, item in enumerate(value):
                yield from _flatten(f"{path}[{index}]", item)
    else:
        yield path, _scalar(value, path)


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (Mapping, list, tuple)) and not value)


def _scalar(value: Any, path: str) -> str:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{path}: not encodable as UTF-8") from None
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: {value!r} is not a number a query string can carry")
        return json.dumps(value)
    raise TypeError(f"{path}: cannot put a {value.__class__.__name__} in a pixel URL")


def _check_typed(table: Mapping[str, Any], path: str, numbers: frozenset[str], integers: frozenset[str]) -> None:
    """Refuse what the server would answer with a 400: a typed field that is not a number."""
    for key in numbers | integers:
        if key not in table or table[key] is None:
            continue
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"{path}.{key} must be a number, not {value!r}")
        try:
            (to_integer if key in integers else to_number)(_scalar(value, f"{path}.{key}"))
        except ValidationError as error:
            raise ValueError(f"{path}.{key}: {' '.join(map(str, error.messages))}") from None
