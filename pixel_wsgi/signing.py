"""Signed pixel and click URLs: ``sig`` (HMAC-SHA256) and ``exp`` (Unix seconds).

The write key sits in every email's HTML, so anyone who has one email can forge
events with it. A source with ``signing_secrets`` can require that every URL carries
a ``sig`` made with one of them, so that only URLs its sender built are accepted.

The signature covers the *decoded* parameters, so a URL that a mail client or a
redirector re-encodes (``%20`` for ``+``, ``%2E`` for ``.``, lower-case escapes, a
different parameter order) still verifies. The exact bytes signed, the canonical
string, are:

1. every parameter of the query except ``sig``, decoded (``+`` is a space,
   percent-escapes are UTF-8), as (name, value) pairs; a repeated name gives one pair
   per value;
2. each name and each value percent-encoded again as UTF-8 with every byte outside
   ``A-Z a-z 0-9 - . _ ~`` written ``%XX`` (upper-case hex), which is Python's
   ``urllib.parse.quote(text, safe="")`` and JavaScript's ``encodeURIComponent``
   plus ``!'()*``;
3. the pairs sorted by encoded name, then encoded value (byte order);
4. joined as ``name=value`` with ``&`` between pairs.

``sig`` is the lower-case hex HMAC-SHA256 of that string's ASCII bytes with a secret's
UTF-8 bytes as the key. Step 2 makes the string unambiguous (no name or value can
contain a bare ``=`` or ``&``), which is why it is not simply the decoded text.

``exp``, when present, is signed like any other parameter; after the signature
verifies, a time past ``exp`` is refused as expired.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Iterable, Mapping, Sequence, Tuple
from urllib.parse import quote

from .errors import RequestRejected, bad_parameter

__all__ = ["SIGNATURE_PARAMETERS", "canonical_string", "sign", "verify"]

SIGNATURE = "sig"
EXPIRES = "exp"
# Parameters that carry the signature itself: never part of an event, never "unknown".
SIGNATURE_PARAMETERS = frozenset({SIGNATURE, EXPIRES})


def _encode(text: str) -> str:
    return quote(text, safe="")


def canonical_string(pairs: Iterable[Tuple[str, str]]) -> bytes:
    """The bytes a signature covers (see the module docstring); ``sig`` pairs are left out."""
    encoded = sorted((_encode(name), _encode(value)) for name, value in pairs if name != SIGNATURE)
    return "&".join(f"{name}={value}" for name, value in encoded).encode("ascii")


def sign(pairs: Iterable[Tuple[str, str]], secret: str) -> str:
    """The ``sig`` of these parameters under ``secret``."""
    return _digest(canonical_string(pairs), secret)


def _digest(canonical: bytes, secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), canonical, hashlib.sha256).hexdigest()


def _pairs(grouped: Mapping[str, Sequence[str]]) -> Iterable[Tuple[str, str]]:
    for name, values in grouped.items():
        for value in values:
            yield name, value


def verify(grouped: Mapping[str, Sequence[str]], secrets: Sequence[str], *, required: bool, now: float | None = None) -> bool:
    """Check ``sig`` and ``exp`` of one request's decoded parameters.

    Returns whether the request carries a valid signature (``False`` when it carries
    none and none is required). Raises ``RequestRejected``: 403 ``invalid signature``
    for a wrong, malformed or (when required) missing one, 403 ``signature expired``
    once ``exp`` has passed, 400 for an ``exp`` that is not Unix seconds.
    """
    given = grouped.get(SIGNATURE)
    if not given:
        if required:
            raise RequestRejected(403, "invalid signature")
        return False
    if not secrets or len(given) != 1:
        raise RequestRejected(403, "invalid signature")
    # Bytes, not str: compare_digest refuses non-ASCII text, and a forged sig may be any.
    signature = given[0].lower().encode("utf-8", "surrogateescape")
    canonical = canonical_string(_pairs(grouped))
    # Every secret is tried, whatever the first comparisons say: the time taken tells
    # nothing about which one (if any) was close.
    valid = False
    for secret in secrets:
        valid |= hmac.compare_digest(_digest(canonical, secret).encode("ascii"), signature)
    if not valid:
        raise RequestRejected(403, "invalid signature")
    expires = grouped.get(EXPIRES)
    if expires:
        # Twelve digits reach the year 33658; more would only make int() slow (or refuse).
        if len(expires) != 1 or not expires[0].isascii() or not expires[0].isdigit() or len(expires[0]) > 12:
            raise bad_parameter("exp: must be a time in Unix seconds")
        if (time.time() if now is None else now) > int(expires[0]):
            raise RequestRejected(403, "signature expired")
    return True
