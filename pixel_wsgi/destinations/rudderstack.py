"""A drop-in front for a RudderStack data plane: ``POST {data_plane_url}/v1/{type}``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from ..masking import mask_write_key
from ..options import URL, NonEmptyString
from .base import Payload
from .http import HTTPDestination, HTTPOptions, HTTPOptionsSchema, basic_auth


@dataclass(frozen=True)
class RudderStackOptions(HTTPOptions):
    #: the API's base URL: ``data_plane_url`` for RudderStack, ``api_url`` for Segment
    base_url: str
    write_key: str


class RudderStackOptionsSchema(HTTPOptionsSchema):
    model: ClassVar[Callable[..., Any]] = RudderStackOptions
    base_url = URL(required=True, data_key="data_plane_url")
    write_key = NonEmptyString(required=True)


class RudderStackDestination(HTTPDestination):
    kind = "rudderstack"
    Options = RudderStackOptionsSchema
    options: RudderStackOptions

    def __init__(self, name: str, options: RudderStackOptions) -> None:
        super().__init__(name, options)
        self.base_url = options.base_url
        self.write_key = options.write_key
        self.headers["Authorization"] = basic_auth(self.write_key)
        # The event type is one of two: build both URLs once.
        self._urls = {kind: f"{self.base_url}/v1/{kind}" for kind in ("page", "track")}

    def url_for(self, payload: Payload) -> str:
        kind = payload.type
        return self._urls.get(kind) or f"{self.base_url}/v1/{kind}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.base_url} key={mask_write_key(self.write_key)}>"
