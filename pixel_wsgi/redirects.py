"""Which click targets the app may redirect to: never an open redirect.

A click URL answers ``302`` to its ``url`` parameter. If any URL were accepted,
every phishing mail could hide its real target behind the sender's tracking domain.
So a target must be covered by a valid signature, or its host must be in the
source's ``redirect_hosts``; and in both cases it must be an absolute ``http`` or
``https`` URL that every browser reads the same way as this module does.

Browsers repair URLs more generously than ``urllib`` parses them (``https:evil.com``,
``/\\evil.com``, a tab inside ``java\\tscript:``, ``https://example.com@evil.com``
whose host is ``evil.com``). Rather than model each repair, anything a repair could
apply to is refused: control characters and whitespace, backslashes, userinfo, a
missing ``//``, hosts that are not plain DNS names or IP literals.
"""

from __future__ import annotations

import re
from typing import Sequence, Tuple
from urllib.parse import urlsplit

from .errors import bad_parameter

__all__ = ["NOT_ALLOWED", "RedirectPolicy", "safe_location"]

NOT_ALLOWED = "url: not an allowed redirect"
ALLOWED_SCHEMES = ("http", "https")
# Browsers drop or reinterpret these anywhere in a URL.
_REPAIRABLE = re.compile(r"[\x00-\x20\x7f\\\u0080-\u00a0\u1680\u2000-\u200f\u2028-\u202f\u205f\u3000\ufeff]")
_SCHEME_AND_SLASHES = re.compile(r"(?i)(https?)://")
# A DNS name (letters, digits, hyphens; IDNs in their xn-- form) or a bracketed IPv6 literal,
# with an optional port.
_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.?|\[[0-9a-f:.]+\])(?::\d{1,5})?\Z")


def _hostname(url: str) -> str | None:
    """The lower-case host of an acceptable absolute http(s) URL, or ``None``."""
    if _REPAIRABLE.search(url) or not _SCHEME_AND_SLASHES.match(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        return None
    netloc = parts.netloc.lower()
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not netloc or "@" in netloc or not _HOST.match(netloc):
        return None
    if port == 0:
        return None
    host = parts.hostname or ""
    return host.rstrip(".") or None


def safe_location(url: str) -> str | None:
    """``url`` if it is an absolute http(s) URL every browser reads as this module does."""
    return url if _hostname(url) is not None else None


class RedirectPolicy:
    """One source's allowed hosts: ``"example.com"`` exactly, ``"*.example.com"`` any subdomain."""

    def __init__(self, hosts: Sequence[str]) -> None:
        exact = set()
        suffixes = []
        for host in hosts:
            host = host.lower().rstrip(".")
            if host.startswith("*."):
                suffixes.append(host[1:])  # ".example.com"
            else:
                exact.add(host)
        self.exact = frozenset(exact)
        self.suffixes: Tuple[str, ...] = tuple(suffixes)

    def host_allowed(self, host: str) -> bool:
        return host in self.exact or host.endswith(self.suffixes)

    def check(self, url: str, *, signed: bool) -> str:
        """The location to redirect to; raises a 400 ``url: not an allowed redirect``.

        A signature vouches for the target (the sender built the URL), so a signed
        URL may go to any host; the target must still be a plain http(s) URL.
        """
        host = _hostname(url)
        if host is None or not (signed or self.host_allowed(host)):
            raise bad_parameter(NOT_ALLOWED)
        return url
