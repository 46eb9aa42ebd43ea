"""Segment's HTTP tracking API: ``POST {api_url}/v1/{type}``, the same shape as RudderStack's."""

from __future__ import annotations

from .rudderstack import RudderStackDestination

SEGMENT_API_URL = "https://api.segment.io"


class SegmentDestination(RudderStackDestination):
    kind = "segment"
    url_option = "api_url"
    default_url = SEGMENT_API_URL
    #: Segment refuses batch requests over 500 KB.
    max_batch_bytes = 450_000
