"""A drop-in front for a RudderStack data plane: ``POST {data_plane_url}/v1/{type}``.

Spooled events are replayed ``batch_size`` at a time to ``/v1/batch`` as
``{"batch": [...]}``: one request per hundred events is what lets a spool drain
faster than the events came in.
"""

from __future__ import annotations

from typing import Sequence

from ..config import OptionReader, mask_write_key
from .base import Payload
from .http import HTTPDestination, basic_auth, read_url

DEFAULT_BATCH_SIZE = 100
BATCH_EVENT = {"type": "batch"}


class RudderStackDestination(HTTPDestination):
    kind = "rudderstack"
    #: the option that names the API's base URL, and its default (None: required)
    url_option = "data_plane_url"
    default_url: str | None = None
    #: RudderStack takes up to 4 MB per batch request; a little is kept for the
    #: difference between characters and bytes in non-ASCII events.
    max_batch_bytes = 3_500_000

    def configure(self, options: OptionReader) -> None:
        super().configure(options)
        self.base_url = read_url(options, self.url_option, self.default_url)
        self.write_key = options.nonempty_string("write_key", required=True) or ""
        self.headers["Authorization"] = basic_auth(self.write_key)
        # The event type is one of two, and replays use a third: build the URLs once.
        self._urls = {kind: f"{self.base_url}/v1/{kind}" for kind in ("page", "track", "batch")}
        self.batch_size = options.integer("batch_size", DEFAULT_BATCH_SIZE, minimum=1)

    def deliver_batch(self, payloads: Sequence[Payload]) -> None:
        """POST the events as one ``{"batch": [...]}`` to ``/v1/batch``; each keeps its ``type``."""
        body = b'{"batch":[' + b",".join(payload.body for payload in payloads) + b"]}"
        # A payload of type "batch" makes url_for pick /v1/batch; the rest of the
        # POST (headers, timeouts, status mapping) is the single event's.
        self.deliver_within(Payload(BATCH_EVENT, payloads[0].source, body), None)

    def url_for(self, payload: Payload) -> str:
        kind = payload.type
        return self._urls.get(kind) or f"{self.base_url}/v1/{kind}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.base_url} key={mask_write_key(self.write_key)}>"
