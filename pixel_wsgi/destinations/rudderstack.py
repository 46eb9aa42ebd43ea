"""A drop-in front for a RudderStack data plane: ``POST {data_plane_url}/v1/{type}``."""

from __future__ import annotations

from ..config import OptionReader, mask_write_key
from .base import Payload
from .http import HTTPDestination, basic_auth, read_url


class RudderStackDestination(HTTPDestination):
    kind = "rudderstack"
    #: the option that names the API's base URL, and its default (None: required)
    url_option = "data_plane_url"
    default_url: str | None = None

    def configure(self, options: OptionReader) -> None:
        super().configure(options)
        self.base_url = read_url(options, self.url_option, self.default_url)
        self.write_key = options.nonempty_string("write_key", required=True) or ""
        self.headers["Authorization"] = basic_auth(self.write_key)
        # The event type is one of two: build both URLs once.
        self._urls = {kind: f"{self.base_url}/v1/{kind}" for kind in ("page", "track")}

    def url_for(self, payload: Payload) -> str:
        kind = payload.type
        return self._urls.get(kind) or f"{self.base_url}/v1/{kind}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.base_url} key={mask_write_key(self.write_key)}>"
