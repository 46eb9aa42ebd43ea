"""A drop-in front for a RudderStack data plane: ``POST {data_plane_url}/v1/{type}``.

Spooled events are replayed ``batch_size`` at a time to ``/v1/batch`` as
``{"batch": [...]}``: one request per hundred events is what lets a spool drain
faster than the events came in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

from ..masking import mask_write_key
from ..options import URL, Integer, NonEmptyString
from .base import Payload
from .http import HTTPDestination, HTTPOptions, HTTPOptionsSchema, basic_auth

BATCH_EVENT = {"type": "batch"}


@dataclass(frozen=True)
class RudderStackOptions(HTTPOptions):
    #: the API's base URL: ``data_plane_url`` for RudderStack, ``api_url`` for Segment
    base_url: str
    write_key: str
    #: spooled events sent per ``/v1/batch`` request when the spool is replayed
    batch_size: int


class RudderStackOptionsSchema(HTTPOptionsSchema):
    model: ClassVar[Callable[..., Any]] = RudderStackOptions
    base_url = URL(required=True, data_key="data_plane_url")
    write_key = NonEmptyString(required=True)
    batch_size = Integer(load_default=100, minimum=1)


class RudderStackDestination(HTTPDestination):
    kind = "rudderstack"
    Options = RudderStackOptionsSchema
    options: RudderStackOptions
    #: RudderStack takes up to 4 MB per batch request; a little is kept for the
    #: difference between characters and bytes in non-ASCII events.
    max_batch_bytes = 3_500_000

    def __init__(self, name: str, options: RudderStackOptions) -> None:
        super().__init__(name, options)
        self.base_url = options.base_url
        self.write_key = options.write_key
        self.headers["Authorization"] = basic_auth(self.write_key)
        # The event type is one of two, and replays use a third: build the URLs once.
        self._urls = {kind: f"{self.base_url}/v1/{kind}" for kind in ("page", "track", "batch")}
        self.batch_size = options.batch_size

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
