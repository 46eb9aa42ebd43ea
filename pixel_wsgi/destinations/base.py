"""The destination interface: one small class a user can implement too.

A destination declares its options as a schema (``Options``, a
``pixel_wsgi.options.OptionsSchema``): the configuration is checked against it when it
is read, every mistake reported with its key path, and the destination is built once,
from the typed object that schema returns. It must not open connections, files or
threads in ``__init__`` (gunicorn's ``--preload`` forks after that); open them lazily on
the first ``deliver``, per process and where needed per thread. ``deliver`` either
returns (the destination has the event) or raises ``DeliveryError``; any other
exception is treated as a retryable failure.

``deliver`` may be called from many threads at once (gunicorn's gthread workers) and
again for the same ``messageId`` (delivery is at least once: a timed-out request may
have arrived). A user's class::

    from dataclasses import dataclass
    from pixel_wsgi.destinations import Destination, DeliveryError
    from pixel_wsgi.options import NonEmptyString, OptionsSchema

    @dataclass(frozen=True)
    class KafkaOptions:
        topic: str

    class KafkaDestination(Destination):
        class Options(OptionsSchema):
            model = KafkaOptions
            topic = NonEmptyString(required=True)

        options: KafkaOptions

        def deliver(self, payload):
            producer = self.producer()  # opened on first use, after the fork
            try:
                producer.send(self.options.topic, payload.body, key=payload.message_id)
            except ProducerError as exc:
                raise DeliveryError(str(exc)) from exc
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Mapping

import orjson

from ..errors import DeliveryError
from ..options import OptionsSchema

__all__ = ["Destination", "DeliveryError", "Payload", "encode_event"]

# What orjson refuses (an integer beyond 64 bits, such as a 30-digit `revenue`) the
# standard library writes, in the same form: compact, UTF-8 rather than \u escapes.
# Built once (``json.dumps`` with options builds an encoder per call); no check for
# circular references: an event is a tree built from a query string and the server's
# own fields, so it has none.
_FALLBACK_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


def encode_event(event: Mapping[str, Any]) -> bytes:
    """An event as compact JSON in UTF-8, as every destination sends or stores it.

    orjson writes the same bytes as ``json.dumps(event, ensure_ascii=False,
    separators=(",", ":"))`` for what an event holds (strings, integers, finite
    numbers, lists, objects) at a tenth of the cost; it only spells exponents
    differently (``1e16`` for ``1e+16``), the same number to every JSON reader.
    """
    try:
        return orjson.dumps(event)
    except TypeError:  # orjson.JSONEncodeError: a big integer, or a type it does not know
        return _FALLBACK_ENCODER.encode(event).encode("utf-8")


class Payload:
    """One event on its way out, with its JSON serialized at most once."""

    __slots__ = ("event", "source", "_body", "_text")

    def __init__(self, event: Mapping[str, Any], source: str = "", body: bytes | None = None) -> None:
        self.event = event
        #: the name of the configured source the event came in through
        self.source = source
        self._body = body
        self._text: str | None = None

    @property
    def body(self) -> bytes:
        """The event as compact JSON in UTF-8 (what an HTTP request or a file carries)."""
        if self._body is None:
            self._body = encode_event(self.event)
        return self._body

    @property
    def text(self) -> str:
        """The same JSON as text (what a database column keeps)."""
        if self._text is None:
            self._text = self.body.decode("utf-8")
        return self._text

    @property
    def type(self) -> str:
        return str(self.event.get("type", ""))

    @property
    def message_id(self) -> str:
        return str(self.event.get("messageId", ""))


class Destination:
    """Base class. Subclasses declare ``Options`` and implement ``deliver``."""

    #: ``type = "..."`` in the configuration; informational for user classes.
    kind = "custom"
    #: The schema of this destination's options table (no options by default).
    Options: ClassVar[type[OptionsSchema]] = OptionsSchema
    #: Attempts after the first failure, all within the dispatch budget; HTTP
    #: destinations read it from their ``retries`` option.
    retries = 2

    def __init__(self, name: str, options: Any = None) -> None:
        self.name = name
        #: what ``Options().load(table)`` returned for this destination's table
        self.options = options

    def deliver(self, payload: Payload) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def deliver_within(self, payload: Payload, seconds: float | None) -> None:
        """``deliver``, taking at most about ``seconds`` (what is left of the budget).

        Destinations that can bound their wait (HTTP timeouts) override this; the
        default ignores the limit.
        """
        self.deliver(payload)

    def close(self) -> None:
        """Release connections and files; called at shutdown and by tests."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
