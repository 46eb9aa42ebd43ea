"""Configuration: a TOML file or a dict of the same shape becomes a validated ``Config``.

The configuration is declared once, as marshmallow schemas: one per table, each default
in its field declaration, unknown keys refused. ``load_config`` is the only way in, and
``PixelApp``, ``create_app``, ``pixel-wsgi serve`` and ``pixel-wsgi check-config`` all
call it, so they find the same mistakes. One run reports every mistake, each with its
key path (``destinations.hook.url: required``): nothing is left to fail at the first
request, and nothing is hidden behind the first error found. ``${NAME}`` in any string
is read from the environment.

Destinations check their own options with their own schema (``Destination.Options``),
in the same run and the same report; each destination is then built once, from the
typed options object that schema returns.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from marshmallow import ValidationError, fields, validates_schema

from .destinations import Destination, resolve_destination_class
from .errors import ConfigError
from .options import (
    Boolean,
    Choice,
    Integer,
    Networks,
    NonEmptyString,
    Number,
    OptionsSchema,
    SQLiteFile,
    String,
    StringList,
    flatten_messages,
)
from .spool import DEFAULT_MAX_BYTES, spool_file_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

CONFIG_ENV_VAR = "PIXEL_WSGI_CONFIG"

# "example.com" or "*.example.com": a wildcard only as the whole first label.
_REDIRECT_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\Z", re.IGNORECASE)
_ENV_REFERENCE = re.compile(r"\$\$|\$\{([^}]*)\}")


# -- the settings the code reads (built by the schemas below; defaults live there) ----


@dataclass(frozen=True)
class Limits:
    """Bounds on one query string; each breach is a 400 (414 for the length)."""

    max_query_length: int
    max_params: int
    max_depth: int
    max_key_length: int
    max_array_index: int


@dataclass(frozen=True)
class SpoolConfig:
    path: str
    max_bytes: int
    drain_interval: float


@dataclass(frozen=True)
class DispatchConfig:
    budget: float
    breaker_failures: int
    breaker_cooldown: float


@dataclass(frozen=True)
class MetricsConfig:
    #: where Prometheus text is served, an absolute path; None: no metrics
    path: str | None
    #: client addresses or networks that may read the metrics; others get a 404
    allow: tuple[str, ...]


@dataclass(frozen=True)
class SourceConfig:
    name: str
    write_key: str
    enabled: bool
    # None means every configured destination.
    destinations: tuple[str, ...] | None
    ip: str
    errors_as_pixel: bool
    unknown_params: str
    infer_types: bool
    machine_opens: str
    dedupe_window: float
    signing_secrets: tuple[str, ...]
    require_signature: bool
    redirect_hosts: tuple[str, ...]


@dataclass(frozen=True)
class FetcherConfig:
    """A program that fetches pixels on a person's behalf (a mail proxy) or on its own (a prefetcher)."""

    name: str
    machine: bool
    #: a regular expression searched in the User-Agent header; None matches any
    user_agent: str | None
    #: client networks (CIDR); empty matches any address
    networks: tuple[str, ...]


@dataclass(frozen=True)
class DedupeConfig:
    path: str | None


@dataclass(frozen=True)
class DestinationConfig:
    """One ``[destinations.NAME]`` table: its class and the options its schema returned."""

    name: str
    #: the ``type`` key: a built-in kind or ``package.module:Class``
    kind: str
    cls: type[Destination]
    options: Any

    def build(self) -> Destination:
        return self.cls(self.name, self.options)


@dataclass(frozen=True)
class Config:
    sources: tuple[SourceConfig, ...]
    destinations: Mapping[str, DestinationConfig]
    prefix: str
    trusted_proxies: int
    response_body: str
    # None leaves the Access-Control-Allow-Origin header out.
    cors_allow_origin: str | None
    limits: Limits
    spool: SpoolConfig
    dispatch: DispatchConfig
    metrics: MetricsConfig
    #: requests whose source cannot be known (no or an unknown writeKey) answered as a GIF
    errors_as_pixel: bool
    #: where Segment's pixel API (?data=<base64 JSON>) is served; None is off
    segment_prefix: str | None
    fetchers: tuple[FetcherConfig, ...]
    dedupe: DedupeConfig

    def destinations_for(self, source: SourceConfig) -> tuple[str, ...]:
        if source.destinations is None:
            return tuple(self.destinations)
        return source.destinations


# -- the schemas ------------------------------------------------------------------------


class LimitsSchema(OptionsSchema):
    model = Limits
    # RudderStack's own docs allow pixel URLs up to 32 KB.
    max_query_length = Integer(load_default=32 * 1024, minimum=1)
    max_params = Integer(load_default=1000, minimum=1)
    max_depth = Integer(load_default=32, minimum=2)
    max_key_length = Integer(load_default=256, minimum=16)
    max_array_index = Integer(load_default=100, minimum=0)


class SpoolSchema(OptionsSchema):
    model = SpoolConfig
    path = NonEmptyString(load_default="pixel-spool.sqlite3")
    # The database file never grows past this: at the bound an event that would need
    # the spool is answered 503 rather than filling the disk during a long outage.
    max_bytes = Integer(load_default=DEFAULT_MAX_BYTES, minimum=1 << 20)
    # Seconds between background drains of due events; 0 leaves draining to
    # `pixel-wsgi spool replay`.
    drain_interval = Number(load_default=30.0, minimum=0)

    @validates_schema(skip_on_field_errors=False)
    def _usable(self, data: dict[str, Any], **kwargs: Any) -> None:
        # A file that is there must be a spool this version can use: found now, not as
        # a 503 when the first destination fails. Checked even when another spool key
        # is wrong, so that one run reports both.
        if "path" not in data:
            return
        problem = spool_file_problem(data["path"])
        if problem:
            raise ValidationError(problem, "path")


class DispatchSchema(OptionsSchema):
    model = DispatchConfig
    # Seconds one pixel request may spend on deliveries and their retries before
    # whatever is left goes to the spool; email clients give up on images after a few.
    budget = Number(load_default=3.0, minimum=0)
    # Consecutive failures that open a destination's circuit, and how long it stays
    # open before one request probes it again.
    breaker_failures = Integer(load_default=5, minimum=1)
    breaker_cooldown = Number(load_default=30.0, minimum=0)


class MetricsPath(NonEmptyString):
    def convert(self, value: Any) -> Any:
        value = super().convert(value)
        if not value.startswith("/") or "?" in value:
            raise ValidationError(f"must be an absolute path such as /metrics, not {value!r}")
        if importlib.util.find_spec("prometheus_client") is None:
            raise ValidationError("metrics need prometheus_client: pip install 'pixel-wsgi[metrics]'")
        return value


class MetricsSchema(OptionsSchema):
    model = MetricsConfig
    path = MetricsPath(load_default=None)
    # Loopback only: metrics name sources and destinations, which is nobody else's business.
    allow = Networks(load_default=("127.0.0.0/8", "::1/128"))


# An HMAC key shorter than this can be guessed offline from one signed URL.
MIN_SIGNING_SECRET_LENGTH = 16


def _signing_secret(secret: str) -> str:
    if len(secret) < MIN_SIGNING_SECRET_LENGTH:
        raise ValueError(f"must be at least {MIN_SIGNING_SECRET_LENGTH} characters")
    return secret


def _redirect_host(host: str) -> str:
    if not _REDIRECT_HOST.match(host):
        raise ValueError(f"not a host name or *.domain: {host!r}")
    if host.startswith("*.") and "." not in host[2:].rstrip("."):
        # "*.com" would let every .com site through: an open redirect by configuration.
        raise ValueError(f"a wildcard needs a domain of two labels or more, not {host!r}")
    return host.lower()


class UserAgentPattern(NonEmptyString):
    def convert(self, value: Any) -> Any:
        value = super().convert(value)
        try:
            re.compile(value)
        except re.error as exc:
            raise ValidationError(f"not a regular expression ({exc})") from None
        return value


class FetcherSchema(OptionsSchema):
    model = FetcherConfig
    name = NonEmptyString(required=True)
    machine = Boolean(load_default=True)
    user_agent = UserAgentPattern(load_default=None)
    networks = Networks(load_default=())

    @validates_schema(skip_on_field_errors=False)
    def _matches_something(self, data: dict[str, Any], **kwargs: Any) -> None:
        # Run beside the other keys' mistakes; a key that has one is not in ``data``.
        if "user_agent" in data and "networks" in data and data["user_agent"] is None and not data["networks"]:
            raise ValidationError("needs user_agent, networks or both (it would match every request)")


class DedupeSchema(OptionsSchema):
    model = DedupeConfig
    # None: beside the spool, as "<spool path>.dedupe" (one file per spool, so every
    # worker that shares the spool shares the messageIds it has seen).
    path = SQLiteFile(load_default=None)


class SourceSchema(OptionsSchema):
    model = SourceConfig
    name = NonEmptyString(required=True)
    write_key = NonEmptyString(required=True)
    enabled = Boolean(load_default=True)
    destinations = StringList(load_default=None, non_empty=True)
    ip = Choice(("full", "anonymize", "drop"), load_default="full")
    errors_as_pixel = Boolean(load_default=False)
    unknown_params = Choice(("ignore", "reject", "keep"), load_default="ignore")
    infer_types = Boolean(load_default=False)
    # "flag" marks opens by mail proxies, prefetchers and bots in context.pixel;
    # "drop" answers them with the GIF and delivers nothing.
    machine_opens = Choice(("flag", "drop"), load_default="flag")
    # Seconds during which a repeated messageId is answered 200 and not delivered; 0 is off.
    dedupe_window = Number(load_default=0.0, minimum=0)
    # Several secrets so that one can be rotated in while URLs signed with the old one
    # are still in people's mailboxes; the first one is not special.
    signing_secrets = StringList(load_default=(), item=_signing_secret)
    require_signature = Boolean(load_default=False)
    # Hosts a click may redirect to without a signature: "example.com", "*.example.com".
    redirect_hosts = StringList(load_default=(), item=_redirect_host)

    @validates_schema(skip_on_field_errors=False)
    def _signature_needs_secrets(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("require_signature") and "signing_secrets" in data and not data["signing_secrets"]:
            raise ValidationError("needs signing_secrets", "require_signature")


class CORSOrigin(String):
    """A string, or ``false`` to leave the header out."""

    expected = "a string or false"
    accepted = (str, bool)

    def convert(self, value: Any) -> Any:
        if value is True:
            raise ValidationError("must be a string or false")
        return value or None


class Prefix(String):
    def convert(self, value: Any) -> Any:
        if value and (not value.startswith("/") or value.endswith("/")):
            raise ValidationError("must start with '/' and not end with '/' (or be empty)")
        return value


class Tables(fields.List):  # type: ignore[type-arg]
    """``[[name]]`` tables, each loaded by ``schema``, as a tuple (settings are immutable)."""

    def __init__(self, schema: type[OptionsSchema], **kwargs: Any) -> None:
        super().__init__(fields.Nested(schema), **kwargs)
        self.error_messages["invalid"] = "must be a list of tables"

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[Any, ...]:  # type: ignore[override]
        return tuple(super()._deserialize(value, attr, data, **kwargs))


class Destinations(fields.Field):  # type: ignore[type-arg]
    """``[destinations.NAME]`` tables: ``type`` picks the class, whose ``Options`` schema
    reads the rest; every table's mistakes are reported together."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, DestinationConfig]:
        if not isinstance(value, dict):
            raise ValidationError("must be a table")
        built: dict[str, DestinationConfig] = {}
        errors: dict[str, Any] = {}
        for name, table in value.items():
            try:
                built[name] = load_destination(name, table)
            except ValidationError as exc:
                errors[name] = exc.messages
        if errors:
            raise ValidationError(errors)
        return built


class ConfigSchema(OptionsSchema):
    model = Config
    prefix = Prefix(load_default="/pixel/v1")
    # X-Forwarded-For hops to trust; 0 uses the socket's address.
    trusted_proxies = Integer(load_default=0, minimum=0)
    response_body = Choice(("gif", "ok"), load_default="gif")
    # Lets a script's fetch() read the status.
    cors_allow_origin = CORSOrigin(load_default="*")
    limits = fields.Nested(LimitsSchema, load_default=lambda: LimitsSchema().load({}))
    spool = fields.Nested(SpoolSchema, load_default=lambda: SpoolSchema().load({}))
    dispatch = fields.Nested(DispatchSchema, load_default=lambda: DispatchSchema().load({}))
    metrics = fields.Nested(MetricsSchema, load_default=lambda: MetricsSchema().load({}))
    # Requests whose source cannot be known (no or an unknown writeKey) answered as a GIF,
    # so that a broken template still shows an image.
    errors_as_pixel = Boolean(load_default=False)
    segment_prefix = Prefix(load_default=None)
    fetchers = Tables(FetcherSchema, load_default=())
    dedupe = fields.Nested(DedupeSchema, load_default=lambda: DedupeSchema().load({}))
    sources = Tables(SourceSchema, required=True, error_messages={"required": "at least one [[sources]] table is required"})
    destinations = Destinations(
        required=True, error_messages={"required": "at least one destination is required (events must go somewhere)"}
    )

    @validates_schema(skip_on_field_errors=False, pass_original=True)
    def _cross_checks(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        """Rules between tables. Runs even when a table has mistakes, so they are all reported."""
        errors: dict[str, Any] = {}
        sources = data.get("sources")
        destinations = data.get("destinations")
        metrics, prefix = data.get("metrics"), data.get("prefix")
        if (
            isinstance(metrics, MetricsConfig)
            and prefix is not None
            and metrics.path in {f"{prefix}/{name}" for name in ("page", "track", "click", "health")}
        ):
            errors["metrics"] = {"path": [f"{metrics.path} is a pixel endpoint; choose another path such as /metrics"]}
        segment_prefix = data.get("segment_prefix")
        if segment_prefix == "":
            errors["segment_prefix"] = ["must start with '/' and not end with '/'"]
        elif segment_prefix is not None and segment_prefix == prefix:
            errors["segment_prefix"] = ["must differ from prefix"]
        if destinations is None and isinstance(original.get("destinations"), dict):
            # A destination with mistakes of its own is still there to be named.
            destinations = original["destinations"]
        if sources is not None and not sources:
            errors["sources"] = ["at least one [[sources]] table is required"]
        if destinations == {}:
            errors["destinations"] = ["at least one destination is required (events must go somewhere)"]
        names: dict[str, int] = {}
        keys: dict[str, int] = {}
        for index, source in enumerate(sources or ()):
            # A source with mistakes of its own arrives as the dict of its valid keys.
            if not isinstance(source, dict):
                source = vars(source)
            name, write_key = source.get("name"), source.get("write_key")
            problems: dict[str, list[str]] = {}
            if name is not None and name in names:
                problems["name"] = [f"{name!r} is also the name of sources[{names[name]}]"]
            names.setdefault(name, index)
            if write_key is not None and write_key in keys:
                # Never echo a write key, not even in a configuration error.
                problems["write_key"] = [f"same write key as sources[{keys[write_key]}]"]
            keys.setdefault(write_key, index)
            if destinations is not None:
                chosen = source.get("destinations") or ()
                missing = {i: [f"no destination named {n!r}"] for i, n in enumerate(chosen) if n not in destinations}
                if missing:
                    problems["destinations"] = missing  # type: ignore[assignment]
            if problems:
                errors.setdefault("sources", {})[index] = problems
        if errors:
            raise ValidationError(errors)


def load_destination(name: str, table: Any) -> DestinationConfig:
    """One destination table: ``type`` picks the class, its ``Options`` schema the rest.

    Raises ``ValidationError`` with messages relative to the table.
    """
    if not isinstance(table, dict):
        raise ValidationError("must be a table")
    kind = table.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValidationError({"type": ["required (webhook, rudderstack, segment, jsonl, sqlite, memory or package.module:Class)"]})
    try:
        cls = resolve_destination_class(kind)
    except ValueError as exc:
        raise ValidationError({"type": [str(exc)]}) from None
    options = cls.Options().load({key: value for key, value in table.items() if key != "type"})
    return DestinationConfig(name, kind, cls, options)


# -- reading ----------------------------------------------------------------------------


def expand_environment(value: Any, path: str, errors: list[str], environ: Mapping[str, str]) -> Any:
    """Replace ``${NAME}`` in every string of a nested structure; ``$$`` is a literal ``$``."""
    if isinstance(value, str):
        if "$" not in value:
            return value

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1)
            if name not in environ:
                errors.append(f"{path}: environment variable {name} is not set")
                return match.group(0)  # left as written: later checks must not report it again
            return environ[name]

        return _ENV_REFERENCE.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_environment(v, f"{path}.{k}" if path else k, errors, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_environment(v, f"{path}[{i}]", errors, environ) for i, v in enumerate(value)]
    return value


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            table: dict[str, Any] = tomllib.load(handle)
            return table
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(
    config: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Turn a path, a dict or ``None`` (read ``$PIXEL_WSGI_CONFIG``) into a ``Config``.

    Raises ``ConfigError`` with every mistake, each prefixed with its key path.
    """
    if isinstance(config, Config):
        return config
    environ = os.environ if environ is None else environ
    if config is None:
        config = environ.get(CONFIG_ENV_VAR)
        if not config:
            raise ConfigError(f"no configuration: pass one or set {CONFIG_ENV_VAR} to a TOML file")
    raw = read_toml(config) if isinstance(config, (str, os.PathLike)) else config
    if not isinstance(raw, Mapping):
        raise ConfigError(f"configuration must be a table, not {type(raw).__name__}")
    environment_errors: list[str] = []
    expanded = expand_environment(dict(raw), "", environment_errors, environ)
    try:
        loaded: Config = ConfigSchema().load(expanded)
    except ValidationError as exc:
        errors = flatten_messages(exc.messages)
        # A value that still holds ${NAME} was already reported as a missing variable.
        reported = {line.split(":", 1)[0] for line in environment_errors}
        raise ConfigError(environment_errors + [line for line in errors if line.split(":", 1)[0] not in reported]) from None
    if environment_errors:
        raise ConfigError(environment_errors)
    return loaded


def default_settings(schema: type[OptionsSchema]) -> Any:
    """A table's settings when the configuration leaves it out (its declared defaults)."""
    return schema().load({})


def build_destination(name: str, table: Mapping[str, Any]) -> Destination:
    """One destination from a table of the configuration's shape (``{"type": ..., ...}``),
    checked and built as ``load_config`` would; for scripts and tests."""
    try:
        settings = load_destination(name, dict(table))
    except ValidationError as exc:
        raise ConfigError(flatten_messages(exc.messages, f"destinations.{name}")) from None
    return settings.build()
