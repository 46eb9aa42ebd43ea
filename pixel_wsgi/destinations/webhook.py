"""POST each event as JSON to a URL, optionally signed so the receiver can trust it."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Mapping

from ..options import URL, NonEmptyString, StringTable
from .base import Payload
from .http import HTTPDestination, HTTPOptions, HTTPOptionsSchema

SIGNATURE_HEADER = "X-Pixel-Signature"


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Pixel-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class WebhookOptions(HTTPOptions):
    url: str
    headers: dict[str, str]
    signing_secret: str | None


class WebhookOptionsSchema(HTTPOptionsSchema):
    model = WebhookOptions
    url = URL(required=True)
    headers = StringTable(load_default=dict)
    signing_secret = NonEmptyString(load_default=None)


class WebhookDestination(HTTPDestination):
    kind = "webhook"
    Options = WebhookOptionsSchema
    options: WebhookOptions

    def __init__(self, name: str, options: WebhookOptions) -> None:
        super().__init__(name, options)
        self.url = options.url
        self.headers.update(options.headers)
        secret = options.signing_secret
        self.signing_secret = secret.encode("utf-8") if secret else None

    def url_for(self, payload: Payload) -> str:
        return self.url

    def headers_for(self, payload: Payload) -> Mapping[str, str]:
        if self.signing_secret is None:
            return {}
        return {SIGNATURE_HEADER: sign(self.signing_secret, payload.body)}

    def __repr__(self) -> str:
        return f"<WebhookDestination {self.name!r} {self.url}>"
