"""The fields the server adds to a validated event: type, ids, times, channel, IP, user agent, library."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from functools import lru_cache
from typing import Any, Mapping

from .config import SourceConfig
from .version import __version__

LIBRARY = {"name": "pixel-wsgi", "version": __version__}
# On page calls these are copied between context.page and properties when only one
# side has them: RudderStack's SDKs send both, and destinations read either.
PAGE_MIRRORED_FIELDS = ("path", "url", "referrer", "title", "search")
# A pixel cannot select destinations (neither can AMP's or RudderStack's own pixel
# API): every event goes to all of them, and integrations.* parameters are ignored.
INTEGRATIONS_ALL = {"All": True}


# RFC 4122 version 4: the version nibble is 4 and the variant bits are 10.
_UUID4_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_BITS = (0x4000 << 64) | (0x8000 << 48)
# Message ids drawn per os.urandom call. The call releases the GIL, and under a
# threaded server (gunicorn gthread) getting it back means waiting for the other
# request threads: once per 256 events instead of once per event.
_IDS_PER_DRAW = 256


class _RandomBytes(threading.local):
    """Random bytes from ``os.urandom``, per thread and per process, used 16 at a time."""

    pid = 0
    data = b""
    offset = 0


_random_bytes = _RandomBytes()


def new_message_id() -> str:
    """A random UUID4 string, like ``str(uuid.uuid4())`` at a fraction of the cost.

    The 16 random bytes come from ``os.urandom`` like ``uuid4``'s, drawn 256 ids at a
    time into a buffer that belongs to one thread of one process: a gunicorn child
    (a new pid) draws its own instead of reusing what its parent drew before the fork.
    """
    pool = _random_bytes
    offset = pool.offset
    pid = os.getpid()
    if offset >= len(pool.data) or pool.pid != pid:
        pool.data, pool.pid, offset = os.urandom(16 * _IDS_PER_DRAW), pid, 0
    pool.offset = offset + 16
    digits = "%032x" % (int.from_bytes(pool.data[offset : offset + 16], "big") & _UUID4_MASK | _UUID4_BITS)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


@lru_cache(maxsize=2)
def _utc_second(seconds: int) -> str:
    # Every request within one second shares this prefix: strftime runs once a second.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def utc_timestamp(now: float) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``; ~10x faster than ``datetime.isoformat``."""
    seconds = int(now)
    return "%s.%03dZ" % (_utc_second(seconds), int((now - seconds) * 1000))


def client_address(environ: Mapping[str, Any], trusted_proxies: int) -> str | None:
    """``REMOTE_ADDR``, or the ``X-Forwarded-For`` entry that the trusted hops vouch for.

    Like werkzeug's ``ProxyFix``: with N trusted proxies the client is the Nth address
    from the right; anything further left was written by the client and is ignored.
    """
    remote = environ.get("REMOTE_ADDR") or None
    if trusted_proxies:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded:
            hops = [hop.strip() for hop in forwarded.split(",")]
            if len(hops) >= trusted_proxies:
                candidate = hops[-trusted_proxies]
                try:
                    return str(ipaddress.ip_address(candidate))
                except ValueError:
                    pass
    return remote


def anonymize_ip(address: str) -> str | None:
    """IPv4: last octet zeroed; IPv6: last 80 bits zeroed (Google Analytics' rule)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.version == 4:
        return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFF00))
    return str(ipaddress.IPv6Address(int(ip) & ~((1 << 80) - 1) & ((1 << 128) - 1)))


def complete_event(
    event_type: str,
    loaded: dict[str, Any],
    source: SourceConfig,
    environ: Mapping[str, Any],
    trusted_proxies: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Add type, ids, times, channel and context to what the schema loaded."""
    now = utc_timestamp(time.time())
    event: dict[str, Any] = {"type": event_type}
    if extra:
        event.update(extra)
    event.update(loaded)
    event["type"] = event_type
    if "messageId" not in event:
        event["messageId"] = new_message_id()
    event.setdefault("originalTimestamp", now)
    event.setdefault("sentAt", now)
    event["receivedAt"] = now
    event.setdefault("channel", "web")
    event["integrations"] = INTEGRATIONS_ALL.copy()

    context = event["context"] = dict(event.get("context") or {})
    # context.ip is the server's to say: a parameter could otherwise spoof it or
    # defeat a source's "anonymize"/"drop".
    context.pop("ip", None)
    if source.ip != "drop":
        address = client_address(environ, trusted_proxies)
        if address and source.ip == "anonymize":
            address = anonymize_ip(address)
        if address:
            context["ip"] = address
    if "userAgent" not in context:
        user_agent = environ.get("HTTP_USER_AGENT")
        if user_agent:
            context["userAgent"] = user_agent
    context.setdefault("library", LIBRARY.copy())

    if event_type == "page":
        _mirror_page_properties(event)
    return event


def _mirror_page_properties(event: dict[str, Any]) -> None:
    properties = event.get("properties")
    page = event["context"].get("page")
    if properties is None:
        properties = {}
    if not isinstance(page, dict):
        if page is not None:
            return  # `context.page=x` is a plain value: nothing to mirror into
        page = {}
    for name in PAGE_MIRRORED_FIELDS:
        in_page = name in page
        in_properties = name in properties
        if in_page and not in_properties:
            properties[name] = page[name]
        elif in_properties and not in_page:
            page[name] = properties[name]
    if properties:
        event["properties"] = properties
    if page:
        event["context"]["page"] = page
