"""POST each event as JSON to a URL, optionally signed so the receiver can trust it."""

from __future__ import annotations

import hashlib
import hmac
from typing import Mapping

from ..config import OptionReader
from .base import Payload
from .http import HTTPDestination, read_url

SIGNATURE_HEADER = "X-Pixel-Signature"


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Pixel-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookDestination(HTTPDestination):
    kind = "webhook"

    def configure(self, options: OptionReader) -> None:
        super().configure(options)
        self.url = read_url(options, "url")
        self.headers.update(options.string_table("headers"))
        secret = options.nonempty_string("signing_secret")
        self.signing_secret = secret.encode("utf-8") if secret else None

    def url_for(self, payload: Payload) -> str:
        return self.url  # type: ignore[no-any-return]

    def headers_for(self, payload: Payload) -> Mapping[str, str]:
        if self.signing_secret is None:
            return {}
        return {SIGNATURE_HEADER: sign(self.signing_secret, payload.body)}

    def __repr__(self) -> str:
        return f"<WebhookDestination {self.name!r} {self.url}>"
