"""POST each event as JSON to a URL, optionally signed so the receiver can trust it.

With a ``signing_secret`` every request carries two signatures of the same key:

- ``X-Pixel-Signature: sha256=<hex HMAC-SHA256 of the body>``;
- the Standard Webhooks headers, which receivers verify with the ``standardwebhooks``
  library (``Webhook(secret).verify(body, headers)``): ``webhook-id`` (the event's
  ``messageId``, the same on every retry, so a receiver can drop duplicates),
  ``webhook-timestamp`` (Unix seconds when this attempt was sent: a receiver refuses
  one older than its tolerance, which stops replays) and ``webhook-signature``
  (``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``).

The secret is either the Standard Webhooks form, ``whsec_`` followed by base64 (the
key is the decoded bytes, as the library reads it), or any other string, whose UTF-8
bytes are the key (a receiver then builds ``Webhook(secret.encode())``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any, Mapping

from marshmallow import ValidationError

from ..options import URL, NonEmptyString, StringTable
from .base import Payload
from .http import HTTPDestination, HTTPOptions, HTTPOptionsSchema

SIGNATURE_HEADER = "X-Pixel-Signature"
STANDARD_SECRET_PREFIX = "whsec_"


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Pixel-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def standard_signature(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of the Standard Webhooks scheme."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``signing_secret``; raises ``ValueError`` for a bad ``whsec_`` value."""
    if not secret.startswith(STANDARD_SECRET_PREFIX):
        return secret.encode("utf-8")
    encoded = secret[len(STANDARD_SECRET_PREFIX) :].rstrip("=")
    try:
        # Unpadded base64 is common in the wild: pad it back.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a whsec_ secret must be followed by base64") from None
    if not key:
        raise ValueError("a whsec_ secret must not be empty")
    return key


class SigningSecret(NonEmptyString):
    """The HMAC key: a plain string's UTF-8 bytes, or the bytes of a ``whsec_`` value."""

    def convert(self, value: Any) -> Any:
        try:
            return secret_key(super().convert(value))
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


@dataclass(frozen=True)
class WebhookOptions(HTTPOptions):
    url: str
    headers: dict[str, str]
    #: the HMAC key (see ``secret_key``), or None to send unsigned
    signing_secret: bytes | None


class WebhookOptionsSchema(HTTPOptionsSchema):
    model = WebhookOptions
    url = URL(required=True)
    headers = StringTable(load_default=dict)
    signing_secret = SigningSecret(load_default=None)


class WebhookDestination(HTTPDestination):
    kind = "webhook"
    Options = WebhookOptionsSchema
    options: WebhookOptions

    def __init__(self, name: str, options: WebhookOptions) -> None:
        super().__init__(name, options)
        self.url = options.url
        self.headers.update(options.headers)
        self.signing_secret = options.signing_secret

    def url_for(self, payload: Payload) -> str:
        return self.url

    def headers_for(self, payload: Payload) -> Mapping[str, str]:
        if self.signing_secret is None:
            return {}
        body = payload.body
        message_id = payload.message_id
        # Wall-clock time on purpose: the receiver compares it with its own clock.
        timestamp = int(time.time())
        return {
            SIGNATURE_HEADER: sign(self.signing_secret, body),
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": standard_signature(self.signing_secret, message_id, timestamp, body),
        }

    def __repr__(self) -> str:
        return f"<WebhookDestination {self.name!r} {self.url}>"
