"""Configuration: a TOML file or a dict of the same shape becomes a validated ``Config``.

Everything that can be wrong in a configuration is found here, at start-up, and
reported with its key path (``destinations.hook.url: required``); nothing is left to
fail at the first request. ``${NAME}`` in any string is read from the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

CONFIG_ENV_VAR = "PIXEL_WSGI_CONFIG"

IP_MODES = ("full", "anonymize", "drop")
UNKNOWN_PARAM_MODES = ("ignore", "reject", "keep")
RESPONSE_BODIES = ("gif", "ok")
MACHINE_OPEN_MODES = ("flag", "drop")
# An HMAC key shorter than this can be guessed offline from one signed URL.
MIN_SIGNING_SECRET_LENGTH = 16

# "example.com" or "*.example.com": a wildcard only as the whole first label.
_REDIRECT_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\Z", re.IGNORECASE)
_ENV_REFERENCE = re.compile(r"\$\$|\$\{([^}]*)\}")


@dataclass(frozen=True)
class Limits:
    """Bounds on one query string; each breach is a 400 (414 for the length)."""

    # RudderStack's own docs allow pixel URLs up to 32 KB.
    max_query_length: int = 32 * 1024
    max_params: int = 1000
    max_depth: int = 32
    max_key_length: int = 256
    max_array_index: int = 100


@dataclass(frozen=True)
class SourceConfig:
    name: str
    write_key: str
    enabled: bool = True
    # None means every configured destination.
    destinations: tuple[str, ...] | None = None
    ip: str = "full"
    errors_as_pixel: bool = False
    unknown_params: str = "ignore"
    infer_types: bool = False
    # "flag" marks opens by mail proxies, prefetchers and bots in context.pixel;
    # "drop" answers them with the GIF and delivers nothing.
    machine_opens: str = "flag"
    # Seconds during which a repeated messageId is answered 200 and not delivered; 0 is off.
    dedupe_window: float = 0.0
    # Several secrets so that one can be rotated in while URLs signed with the old one
    # are still in people's mailboxes; the first one is not special.
    signing_secrets: tuple[str, ...] = ()
    require_signature: bool = False
    # Hosts a click may redirect to without a signature: "example.com", "*.example.com".
    redirect_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetcherConfig:
    """A program that fetches pixels on a person's behalf (a mail proxy) or on its own (a prefetcher)."""

    name: str
    machine: bool = True
    # A regular expression searched in the User-Agent header; None matches any.
    user_agent: str | None = None
    # Client networks (CIDR); empty matches any address.
    networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class DedupeConfig:
    # None: beside the spool, as "<spool path>.dedupe" (one file per spool, so every
    # worker that shares the spool shares the messageIds it has seen).
    path: str | None = None


@dataclass(frozen=True)
class DestinationConfig:
    name: str
    type: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class SpoolConfig:
    path: str = "pixel-spool.sqlite3"


@dataclass(frozen=True)
class DispatchConfig:
    # Seconds one pixel request may spend on deliveries and their retries before
    # whatever is left goes to the spool; email clients give up on images after a few.
    budget: float = 3.0
    # Consecutive failures that open a destination's circuit, and how long it stays
    # open before one request probes it again.
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0


@dataclass(frozen=True)
class Config:
    sources: tuple[SourceConfig, ...]
    destinations: Mapping[str, DestinationConfig]
    prefix: str = "/pixel/v1"
    trusted_proxies: int = 0
    response_body: str = "gif"
    # Lets a script's fetch() read the status; None leaves the header out.
    cors_allow_origin: str | None = "*"
    limits: Limits = field(default_factory=Limits)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    # Requests whose source cannot be known (no or an unknown writeKey) answered as a GIF.
    errors_as_pixel: bool = False
    # Where Segment's pixel API (?data=<base64 JSON>) is served; None is off.
    segment_prefix: str | None = None
    fetchers: tuple[FetcherConfig, ...] = ()
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)

    def destinations_for(self, source: SourceConfig) -> tuple[str, ...]:
        if source.destinations is None:
            return tuple(self.destinations)
        return source.destinations


class OptionReader:
    """Reads typed values out of one table, collecting errors with their key paths.

    Used for the top level, each source and each destination, so that a single run
    reports every mistake in the file rather than the first one.
    """

    def __init__(self, table: Mapping[str, Any], path: str, errors: list[str]) -> None:
        self.table = table
        self.path = path
        self.errors = errors
        self.seen: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{self.key_path(key)}: {message}")

    def _get(self, key: str, kinds: tuple[type, ...], kind_name: str, default: Any, required: bool) -> Any:
        self.seen.add(key)
        if key not in self.table:
            if required:
                self.error(key, "required")
            return default
        value = self.table[key]
        # bool is an int subclass; a flag is never a number here.
        if isinstance(value, bool) and bool not in kinds:
            self.error(key, f"must be {kind_name}, not {value!r}")
            return default
        if not isinstance(value, kinds):
            self.error(key, f"must be {kind_name}, not {type(value).__name__}")
            return default
        return value

    def string(self, key: str, default: str | None = None, *, required: bool = False, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(key, (str,), "a string", default, required)
        if choices and value is not None and value not in choices:
            self.error(key, f"must be one of {', '.join(choices)}, not {value!r}")
            return default
        return value

    def nonempty_string(self, key: str, default: str | None = None, *, required: bool = False) -> Any:
        value = self.string(key, default, required=required)
        if key in self.table and value == "":
            self.error(key, "must not be empty")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self._get(key, (bool,), "true or false", default, False))

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self._get(key, (int,), "an integer", default, False)
        if value < minimum:
            self.error(key, f"must be at least {minimum}")
            return default
        return int(value)

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self._get(key, (int, float), "a number", default, False)
        if value < minimum:
            self.error(key, f"must be at least {minimum}")
            return default
        return float(value)

    def string_list(self, key: str) -> tuple[str, ...] | None:
        value = self._get(key, (list,), "a list of strings", None, False)
        if value is None:
            return None
        if not all(isinstance(item, str) for item in value):
            self.error(key, "must be a list of strings")
            return None
        return tuple(value)

    def string_table(self, key: str) -> dict[str, str]:
        value = self._get(key, (dict,), "a table of strings", {}, False)
        bad = [name for name, item in value.items() if not isinstance(item, str)]
        if bad:
            self.error(key, f"values must be strings ({', '.join(bad)})")
            return {}
        return dict(value)

    def table_of(self, key: str) -> Mapping[str, Any]:
        table: Mapping[str, Any] = self._get(key, (dict,), "a table", {}, False)
        return table

    def reject_unknown(self) -> None:
        for key in self.table:
            if key not in self.seen:
                self.error(key, "unknown option")


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
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(
    config: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    validate_destination: Callable[[DestinationConfig, list[str]], None] | None = None,
) -> Config:
    """Turn a path, a dict or ``None`` (read ``$PIXEL_WSGI_CONFIG``) into a ``Config``.

    ``validate_destination`` checks each destination's own options; the app passes
    the destination registry's checker so that a missing ``url`` is a start-up error.
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
    errors: list[str] = []
    expanded = expand_environment(dict(raw), "", errors, environ)
    result = _build_config(expanded, errors)
    if validate_destination is not None and not errors:
        for destination in result.destinations.values():
            validate_destination(destination, errors)
    if errors:
        raise ConfigError(errors)
    return result


def _build_config(raw: Mapping[str, Any], errors: list[str]) -> Config:
    top = OptionReader(raw, "", errors)
    prefix = top.string("prefix", "/pixel/v1")
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        top.error("prefix", "must start with '/' and not end with '/' (or be empty)")
    trusted_proxies = top.integer("trusted_proxies", 0)
    response_body = top.string("response_body", "gif", choices=RESPONSE_BODIES)
    cors = top._get("cors_allow_origin", (str, bool), "a string or false", "*", False)
    if cors is True:
        top.error("cors_allow_origin", "must be a string or false")
    cors_allow_origin = cors if isinstance(cors, str) and cors else None

    limits = _build_limits(OptionReader(top.table_of("limits"), "limits", errors))
    spool_reader = OptionReader(top.table_of("spool"), "spool", errors)
    spool = SpoolConfig(path=spool_reader.nonempty_string("path", "pixel-spool.sqlite3"))
    spool_reader.reject_unknown()
    dispatch = _build_dispatch(OptionReader(top.table_of("dispatch"), "dispatch", errors))
    errors_as_pixel = top.boolean("errors_as_pixel", False)
    segment_prefix = top.string("segment_prefix", None)
    if segment_prefix is not None and (not segment_prefix.startswith("/") or segment_prefix.endswith("/")):
        top.error("segment_prefix", "must start with '/' and not end with '/'")
    elif segment_prefix is not None and segment_prefix == prefix:
        top.error("segment_prefix", "must differ from prefix")
    fetchers = _build_fetchers(top, errors)
    dedupe_reader = OptionReader(top.table_of("dedupe"), "dedupe", errors)
    dedupe = DedupeConfig(path=dedupe_reader.nonempty_string("path", None))
    dedupe_reader.reject_unknown()
    raw_destinations = top.table_of("destinations")
    destinations = dict(_build_destinations(raw_destinations, errors))

    top.seen.add("sources")
    raw_sources = raw.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        errors.append("sources: at least one [[sources]] table is required")
        raw_sources = []
    built = [_build_source(item, f"sources[{i}]", destinations, errors) for i, item in enumerate(raw_sources)]
    sources = [source for source in built if source is not None]
    _check_unique(sources, errors)
    if not raw_destinations:
        errors.append("destinations: at least one destination is required (events must go somewhere)")
    top.reject_unknown()
    return Config(
        sources=tuple(sources),
        destinations=destinations,
        prefix=prefix,
        trusted_proxies=trusted_proxies,
        response_body=response_body,
        cors_allow_origin=cors_allow_origin,
        limits=limits,
        spool=spool,
        dispatch=dispatch,
        errors_as_pixel=errors_as_pixel,
        segment_prefix=segment_prefix,
        fetchers=fetchers,
        dedupe=dedupe,
    )


def _build_fetchers(top: OptionReader, errors: list[str]) -> tuple[FetcherConfig, ...]:
    raw = top._get("fetchers", (list,), "a list of [[fetchers]] tables", [], False)
    built = []
    for index, item in enumerate(raw):
        path = f"fetchers[{index}]"
        if not isinstance(item, dict):
            errors.append(f"{path}: must be a table")
            continue
        reader = OptionReader(item, path, errors)
        fetcher = FetcherConfig(
            name=reader.nonempty_string("name", "", required=True),
            machine=reader.boolean("machine", True),
            user_agent=reader.nonempty_string("user_agent", None),
            networks=reader.string_list("networks") or (),
        )
        if fetcher.user_agent is None and not fetcher.networks:
            errors.append(f"{path}: needs user_agent, networks or both (it would match every request)")
        if fetcher.user_agent is not None:
            try:
                re.compile(fetcher.user_agent)
            except re.error as exc:
                reader.error("user_agent", f"not a regular expression ({exc})")
        for position, network in enumerate(fetcher.networks):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                errors.append(f"{path}.networks[{position}]: not a network in CIDR notation: {network!r}")
        reader.reject_unknown()
        built.append(fetcher)
    return tuple(built)


def _build_limits(reader: OptionReader) -> Limits:
    defaults = Limits()
    limits = Limits(
        max_query_length=reader.integer("max_query_length", defaults.max_query_length, minimum=1),
        max_params=reader.integer("max_params", defaults.max_params, minimum=1),
        max_depth=reader.integer("max_depth", defaults.max_depth, minimum=2),
        max_key_length=reader.integer("max_key_length", defaults.max_key_length, minimum=16),
        max_array_index=reader.integer("max_array_index", defaults.max_array_index, minimum=0),
    )
    reader.reject_unknown()
    return limits


def _build_dispatch(reader: OptionReader) -> DispatchConfig:
    defaults = DispatchConfig()
    dispatch = DispatchConfig(
        budget=reader.number("budget", defaults.budget),
        breaker_failures=reader.integer("breaker_failures", defaults.breaker_failures, minimum=1),
        breaker_cooldown=reader.number("breaker_cooldown", defaults.breaker_cooldown),
    )
    reader.reject_unknown()
    return dispatch


def _build_destinations(table: Mapping[str, Any], errors: list[str]) -> Iterator[tuple[str, DestinationConfig]]:
    for name, options in table.items():
        path = f"destinations.{name}"
        if not isinstance(options, dict):
            errors.append(f"{path}: must be a table")
            continue
        kind = options.get("type")
        if not isinstance(kind, str) or not kind:
            errors.append(f"{path}.type: required (webhook, rudderstack, segment, jsonl, sqlite, memory or package.module:Class)")
            continue
        yield name, DestinationConfig(name=name, type=kind, options={k: v for k, v in options.items() if k != "type"})


def _build_source(raw: Any, path: str, destinations: Mapping[str, DestinationConfig], errors: list[str]) -> SourceConfig | None:
    if not isinstance(raw, dict):
        errors.append(f"{path}: must be a table")
        return None
    reader = OptionReader(raw, path, errors)
    name = reader.nonempty_string("name", required=True)
    write_key = reader.nonempty_string("write_key", required=True)
    chosen = reader.string_list("destinations")
    for index, destination in enumerate(chosen or ()):
        if destination not in destinations:
            errors.append(f"{path}.destinations[{index}]: no destination named {destination!r}")
    if chosen is not None and not chosen:
        reader.error("destinations", "must name at least one destination")
    source = SourceConfig(
        name=name or "",
        write_key=write_key or "",
        enabled=reader.boolean("enabled", True),
        destinations=chosen,
        ip=reader.string("ip", "full", choices=IP_MODES),
        errors_as_pixel=reader.boolean("errors_as_pixel", False),
        unknown_params=reader.string("unknown_params", "ignore", choices=UNKNOWN_PARAM_MODES),
        infer_types=reader.boolean("infer_types", False),
        machine_opens=reader.string("machine_opens", "flag", choices=MACHINE_OPEN_MODES),
        dedupe_window=reader.number("dedupe_window", 0.0),
        signing_secrets=reader.string_list("signing_secrets") or (),
        require_signature=reader.boolean("require_signature", False),
        redirect_hosts=reader.string_list("redirect_hosts") or (),
    )
    for index, secret in enumerate(source.signing_secrets):
        if len(secret) < MIN_SIGNING_SECRET_LENGTH:
            errors.append(f"{path}.signing_secrets[{index}]: must be at least {MIN_SIGNING_SECRET_LENGTH} characters")
    if source.require_signature and not source.signing_secrets:
        reader.error("require_signature", "needs signing_secrets")
    for index, host in enumerate(source.redirect_hosts):
        if not _REDIRECT_HOST.match(host):
            errors.append(f"{path}.redirect_hosts[{index}]: not a host name or *.domain: {host!r}")
        elif host.startswith("*.") and "." not in host[2:].rstrip("."):
            # "*.com" would let every .com site through: an open redirect by configuration.
            errors.append(f"{path}.redirect_hosts[{index}]: a wildcard needs a domain of two labels or more, not {host!r}")
    reader.reject_unknown()
    return source


def _check_unique(sources: list[SourceConfig], errors: list[str]) -> None:
    names: dict[str, int] = {}
    keys: dict[str, int] = {}
    for index, source in enumerate(sources):
        if source.name and source.name in names:
            errors.append(f"sources[{index}].name: {source.name!r} is also the name of sources[{names[source.name]}]")
        names.setdefault(source.name, index)
        if source.write_key and source.write_key in keys:
            # Never echo a write key in full, not even in a config error.
            errors.append(f"sources[{index}].write_key: same write key as sources[{keys[source.write_key]}]")
        keys.setdefault(source.write_key, index)


def mask_write_key(write_key: str) -> str:
    """What of a write key may appear in a log line: its first four characters at most."""
    return (write_key[:4] + "…") if write_key else "(none)"
