"""Typed options: the marshmallow fields every configuration table is declared with.

The configuration (``config.py``) and each destination's own options (a destination's
``Options`` schema) are declared with these fields, so that one ``Schema.load`` checks a
table and every mistake reads the same way in the report:
``destinations.hook.timeout: must be a number, not str``. marshmallow's own fields
coerce (``"5"`` is a fine integer to them, ``1`` a fine boolean); a configuration file
is written by a person, and a quoted number there is more often a mistake than a wish,
so these fields take only the TOML type they name.

Declaring a destination's options::

    from dataclasses import dataclass
    from pixel_wsgi.options import NonEmptyString, OptionsSchema

    @dataclass(frozen=True)
    class KafkaOptions:
        topic: str

    class KafkaOptionsSchema(OptionsSchema):
        model = KafkaOptions
        topic = NonEmptyString(required=True)

Defaults live in the field declarations (``load_default=``), never in the model.
"""

from __future__ import annotations

import ipaddress
import os
import sqlite3
from typing import Any, Callable, ClassVar, Mapping, Sequence

from marshmallow import RAISE, Schema, ValidationError, fields, post_load

from .resources import database_uri

__all__ = [
    "Boolean",
    "Choice",
    "Integer",
    "Networks",
    "NonEmptyString",
    "Number",
    "OptionsSchema",
    "String",
    "StringList",
    "StringTable",
    "SQLiteFile",
    "URL",
    "WritableFile",
    "flatten_messages",
]


def _type_name(value: Any) -> str:
    return type(value).__name__


class _Strict(fields.Field):  # type: ignore[type-arg]
    """A field with one-line messages that say what was expected and what was found."""

    default_error_messages = {
        "required": "required",
        "null": "must not be empty",
        "validator_failed": "invalid value",
    }
    #: what the value must be, for "must be {expected}, not {found}"
    expected = "a value"
    #: the Python types accepted (bool is never accepted where it is not named)
    accepted: ClassVar[tuple[type, ...]] = (object,)

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> Any:
        # bool is an int subclass; a flag is never a number here.
        if (isinstance(value, bool) and bool not in self.accepted) or not isinstance(value, self.accepted):
            found = repr(value) if isinstance(value, bool) else _type_name(value)
            raise ValidationError(f"must be {self.expected}, not {found}")
        return self.convert(value)

    def convert(self, value: Any) -> Any:
        return value


class String(_Strict):
    expected = "a string"
    accepted: ClassVar[tuple[type, ...]] = (str,)


class NonEmptyString(String):
    def convert(self, value: Any) -> Any:
        if value == "":
            raise ValidationError("must not be empty")
        return value


class Boolean(_Strict):
    expected = "true or false"
    accepted = (bool,)


class Integer(_Strict):
    expected = "an integer"
    accepted: ClassVar[tuple[type, ...]] = (int,)

    def __init__(self, *, minimum: float | None = None, maximum: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.minimum = minimum
        self.maximum = maximum

    def convert(self, value: Any) -> Any:
        if self.minimum is not None and value < self.minimum:
            raise ValidationError(f"must be at least {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise ValidationError(f"must be at most {self.maximum}")
        return value


class Number(Integer):
    expected = "a number"
    accepted = (int, float)

    def convert(self, value: Any) -> Any:
        return float(super().convert(value))


class Choice(String):
    def __init__(self, choices: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.choices = tuple(choices)

    def convert(self, value: Any) -> Any:
        if value not in self.choices:
            raise ValidationError(f"must be one of {', '.join(self.choices)}, not {value!r}")
        return value


class StringList(_Strict):
    """A list of strings, returned as a tuple (settings are immutable)."""

    expected = "a list of strings"
    accepted = (list, tuple)

    def __init__(self, *, non_empty: bool = False, item: Callable[[str], str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.non_empty = non_empty
        #: checks and converts one item; raises ValueError with the reason
        self.item = item

    def convert(self, value: Any) -> Any:
        if not all(isinstance(item, str) for item in value):
            raise ValidationError("must be a list of strings")
        if self.non_empty and not value:
            raise ValidationError("must not be empty")
        if self.item is None:
            return tuple(value)
        converted, problems = [], {}
        for index, item in enumerate(value):
            try:
                converted.append(self.item(item))
            except ValueError as exc:
                problems[index] = [str(exc)]
        if problems:
            raise ValidationError(problems)
        return tuple(converted)


class StringTable(_Strict):
    """A table whose values are all strings (HTTP headers)."""

    expected = "a table of strings"
    accepted = (dict,)

    def convert(self, value: Any) -> Any:
        bad = [name for name, item in value.items() if not isinstance(item, str)]
        if bad:
            raise ValidationError(f"values must be strings ({', '.join(bad)})")
        return dict(value)


class URL(NonEmptyString):
    """An http(s) URL, kept without a trailing slash so paths can be appended."""

    def convert(self, value: Any) -> Any:
        value = super().convert(value)
        if not value.startswith(("http://", "https://")):
            raise ValidationError(f"must be an http:// or https:// URL, not {value!r}")
        return value.rstrip("/")


class WritableFile(NonEmptyString):
    """A file this process may create or append to: its folder exists and is writable.

    Checked when the configuration is read, so that a typo in a path is a start-up error
    rather than a 503 on the first event. SQLite also creates ``-wal`` and ``-shm`` files
    beside a database, so the folder must be writable even when the file exists.
    """

    def convert(self, value: Any) -> Any:
        value = super().convert(value)
        problem = writable_file_problem(value)
        if problem:
            raise ValidationError(problem)
        return value


class SQLiteFile(WritableFile):
    """A ``WritableFile`` that, if it exists and is not empty, is a SQLite database.

    Any other file (a log, a JSON-lines file given the wrong name) would fail every event
    instead; an empty one is set up on first use.
    """

    def convert(self, value: Any) -> Any:
        value = super().convert(value)
        problem = sqlite_file_problem(value)
        if problem:
            raise ValidationError(problem)
        return value


def sqlite_file_problem(path: str) -> str | None:
    """``"<path> is not a SQLite database"`` when it has content of another kind, else ``None``.

    Asked of SQLite, read-only, rather than by reading the header ourselves: a
    descriptor of a database that this process closes drops the locks SQLite holds on
    it for the process's other connections, and SQLite knows to keep its own open.
    """
    try:
        if os.path.getsize(path) == 0:
            return None  # set up on first use
    except OSError:
        return None  # missing (created on first use) or unreadable (writable_file_problem's say)
    try:
        connection = sqlite3.connect(database_uri(path, "ro"), uri=True, timeout=1.0)
        try:
            connection.execute("PRAGMA schema_version").fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            return f"{path} is not a SQLite database"
        # Locked or busy at this instant: a real database, which is all this asks.
    return None


def writable_file_problem(path: str) -> str | None:
    """Why ``path`` cannot be created or written, or ``None``."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"the folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable"
    if os.path.isdir(path):
        return f"{path} is a folder"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    return None


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"not an IP address or CIDR network: {text!r}") from None


class Networks(StringList):
    """IP addresses or CIDR networks (``127.0.0.1``, ``10.0.0.0/8``, ``::1``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(item=_network, **kwargs)


class OptionsSchema(Schema):
    """A table of options: unknown keys are mistakes, and a load returns ``model(**data)``.

    Without a ``model`` the load returns a plain dict.
    """

    model: ClassVar[Callable[..., Any] | None] = None

    class Meta:
        unknown = RAISE

    error_messages: ClassVar[dict[str, str]] = {"unknown": "unknown option", "type": "must be a table"}  # type: ignore[misc]

    @post_load
    def _make_model(self, data: dict[str, Any], **kwargs: Any) -> Any:
        return data if self.model is None else self.model(**data)


def flatten_messages(messages: Any, path: str = "") -> list[str]:
    """marshmallow's nested error messages as ``key.path[0].name: message`` lines."""
    if isinstance(messages, dict):
        lines = []
        for key, value in messages.items():
            if key == "_schema":
                child = path
            elif isinstance(key, int):
                child = f"{path}[{key}]"
            else:
                child = f"{path}.{key}" if path else str(key)
            lines.extend(flatten_messages(value, child))
        return lines
    if isinstance(messages, list):
        if all(isinstance(item, str) for item in messages):
            return [f"{path}: {item}" if path else item for item in messages]
        return [line for item in messages for line in flatten_messages(item, path)]
    return [f"{path}: {messages}" if path else str(messages)]
