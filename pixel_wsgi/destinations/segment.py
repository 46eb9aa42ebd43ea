"""Segment's HTTP tracking API: ``POST {api_url}/v1/{type}``, the same shape as RudderStack's."""

from __future__ import annotations

from ..options import URL
from .rudderstack import RudderStackDestination, RudderStackOptionsSchema

SEGMENT_API_URL = "https://api.segment.io"


class SegmentOptionsSchema(RudderStackOptionsSchema):
    base_url = URL(load_default=SEGMENT_API_URL, data_key="api_url")


class SegmentDestination(RudderStackDestination):
    kind = "segment"
    Options = SegmentOptionsSchema
    #: Segment refuses batch requests over 500 KB.
    max_batch_bytes = 450_000
