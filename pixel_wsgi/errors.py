"""Exceptions that carry their own HTTP status and configuration errors."""

from __future__ import annotations


class RequestRejected(Exception):
    """A pixel request that cannot be accepted, with the status and one-line reason.

    Raised by parsing and validation; caught in exactly one place (``PixelApp``),
    which turns it into a text response or, for ``errors_as_pixel`` sources, a GIF.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def bad_parameter(reason: str) -> RequestRejected:
    return RequestRejected(400, reason)


class ConfigError(Exception):
    """Every mistake found in a configuration, each prefixed with its key path."""

    def __init__(self, errors: list[str] | str) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("; ".join(self.errors))


class DeliveryError(Exception):
    """A destination did not take an event.

    ``retryable`` says whether trying again may help (connection errors, timeouts,
    408, 429, 5xx); a non-retryable failure (another 4xx) goes to the spool as dead.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        status: int | None = None,
        retry_after: float | None = None,
        response: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.response = response
