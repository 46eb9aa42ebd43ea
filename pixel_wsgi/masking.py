"""What of a secret may appear in a log line or a message."""

from __future__ import annotations


def mask_write_key(write_key: str) -> str:
    """A write key's first four characters at most: enough to tell keys apart in a log,
    far too little to send events with."""
    return (write_key[:4] + "…") if write_key else "(none)"
