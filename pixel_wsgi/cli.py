"""The ``pixel-wsgi`` command: serve, events, check-config, spool list|replay."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import selectors
import shlex
import signal
import sqlite3
import sys
import time
from typing import Any, Iterator, Sequence

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.urls import uri_to_iri

from .app import PixelApp
from .config import CONFIG_ENV_VAR, Config, load_config
from .debugger import REQUESTS_PATH, DebuggerApp, RequestLog
from .destinations.sqlite import open_reader, recover_journals, rows_after
from .drain_lock import DrainLock
from .errors import ConfigError
from .replay import DEFAULT_CONCURRENCY, Replayer
from .responses import one_line
from .spool import Spool
from .version import __version__

WRITE_KEY_BYTES = 18  # 24 URL-safe characters: as hard to guess as a UUID4, shorter to type
DEFAULT_DB = "pixel-events.sqlite3"
DEFAULT_SOURCE = "default"
EVENT_COLUMNS = ("TIME", "TYPE", "EVENT/NAME", "USER", "SOURCE")
# Fixed, so that rows can be printed as they are read (and as they arrive with
# --follow) instead of after reading the whole store to measure them; 80 columns.
EVENT_COLUMN_WIDTHS = (24, 5, 20, 16, 20)
# How often --follow looks for new rows.
FOLLOW_INTERVAL = 0.5
# How long --follow still reads a store that was moved or deleted: the workers go on
# writing to it until they notice, within a second.
ROTATION_GRACE = 2.0
# A write key is never logged in full, not even in the access log: whoever reads the
# log could otherwise send events as that source.
_WRITE_KEY_IN_QUERY = re.compile(r"((?:^|[?&])writeKey=[^&\s]{0,4})[^&\s]*")
# sysexits.h EX_TEMPFAIL: another drainer has the spool; the same command works later.
EX_TEMPFAIL = 75


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixel-wsgi", description="The RudderStack Pixel API as a WSGI app.")
    parser.add_argument("--version", action="version", version=f"pixel-wsgi {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the development server")
    _add_config_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on, 0 for any free one (default: %(default)s)")
    serve.add_argument("--write-key", help="write key of the embedded default source (default: a new random one)")
    serve.add_argument("--db", default=DEFAULT_DB, metavar="FILE", help="event store of the embedded default (default: %(default)s)")
    serve.add_argument(
        "--debugger",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the live page of the last requests at / (loopback clients only; default: on without --config)",
    )
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="(default: %(default)s)")
    serve.set_defaults(handler=command_serve)

    events = commands.add_parser("events", help="show what the SQLite event store holds")
    events.add_argument("--db", default=DEFAULT_DB, help="the SQLite store (default: %(default)s)")
    events.add_argument("--last", type=_count, default=20, metavar="N", help="show the last N events, 0 for all (default: %(default)s)")
    events.add_argument("--json", action="store_true", help="one JSON event per line")
    events.add_argument("--follow", "-f", action="store_true", help="keep watching and show events as they arrive (Ctrl-C stops)")
    events.set_defaults(handler=command_events)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", nargs="?", help=f"the TOML file (default: --config or ${CONFIG_ENV_VAR})")
    _add_config_option(check)
    check.set_defaults(handler=command_check_config)

    spool = commands.add_parser("spool", help="inspect and replay undelivered events")
    spool_commands = spool.add_subparsers(dest="spool_command", required=True, metavar="SUBCOMMAND")
    spool_list = spool_commands.add_parser("list", help="counts per destination, dead or not, and the spool's size")
    _add_spool_options(spool_list)
    spool_list.set_defaults(handler=command_spool_list)
    replay = spool_commands.add_parser("replay", help="re-send spooled events; remove what is delivered")
    _add_spool_options(replay)
    replay.add_argument(
        "--concurrency",
        type=_positive,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help="requests at a time per destination; 1 keeps the spool's order exactly (default: %(default)s)",
    )
    replay.add_argument("--destination", metavar="NAME", help="only this destination")
    replay.add_argument("--dead", action="store_true", help="also re-send events marked dead")
    replay.set_defaults(handler=command_spool_replay)
    return parser


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get(CONFIG_ENV_VAR) or None,
        help=f"the TOML configuration (default: ${CONFIG_ENV_VAR})",
    )


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535, not {value}")
    return value


def _add_spool_options(parser: argparse.ArgumentParser) -> None:
    _add_config_option(parser)
    parser.add_argument(
        "--db",
        default=DEFAULT_DB,
        metavar="FILE",
        help="without --config: the embedded default's event store; its spool is beside it (default: %(default)s)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def command_serve(args: argparse.Namespace) -> int:
    """The development server: werkzeug's threaded server, the config's app or the embedded default."""
    if args.config and args.write_key:
        return _fail("--write-key is for the embedded default; with --config the sources name their own keys", 2)
    write_key = None
    try:
        if args.config:
            app = PixelApp(args.config)
        else:
            folder = os.path.dirname(os.path.abspath(args.db))
            if not os.path.isdir(folder):
                # Found now rather than as a 503 on the first pixel.
                return _fail(f"--db {args.db}: the folder {folder} does not exist", 2)
            write_key = args.write_key or secrets.token_urlsafe(WRITE_KEY_BYTES)
            app = PixelApp(default_config(write_key, args.db))
    except ConfigError as exc:
        return _config_errors(args.config or "the embedded default", exc)
    wsgi_app: Any = app
    debugger = args.debugger if args.debugger is not None else not args.config
    if debugger:
        request_log = RequestLog()
        app.observe(request_log)
        wsgi_app = DebuggerApp(app, request_log)
    try:
        # make_server rather than run_simple: the port is known (even for --port 0)
        # before the banner is printed. Same server, same threads.
        server = make_server(args.host, args.port, wsgi_app, threaded=True, request_handler=MaskingRequestHandler)
    except SystemExit:
        # werkzeug has already said why ("Address already in use", with advice) and exits.
        app.close()
        return 1
    except OSError as exc:
        app.close()
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", 1)
    configure_logging(args.log_level)
    MaskingRequestHandler.colour = sys.stderr.isatty()
    # SIGTERM (docker stop, kill) ends the server like Ctrl-C: destinations are closed.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        banner, example = _banner(app, args, server.port, write_key, debugger)
        if isinstance(wsgi_app, DebuggerApp):
            wsgi_app.hint = example
        print(banner, flush=True)
        server.serve_forever()  # returns on KeyboardInterrupt
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
        app.close()
    print("pixel-wsgi: stopped", flush=True)
    return 0


def default_config(write_key: str, db: str = DEFAULT_DB) -> dict[str, Any]:
    """The embedded default: one source, every event stored in SQLite, the spool beside it."""
    return {
        "sources": [{"name": DEFAULT_SOURCE, "write_key": write_key}],
        "destinations": {"events": {"type": "sqlite", "path": db}},
        "spool": {"path": os.path.join(os.path.dirname(db), "pixel-spool.sqlite3")},
    }


def configure_logging(level: str = "INFO") -> None:
    """Rejections (INFO) and delivery failures (WARNING) on stderr, one line each."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# werkzeug escapes C0 and C1 controls in its request line, not the Unicode line breaks
# that a decoded %E2%80%A8 in the path or query becomes: one request, one log line.
_UNICODE_LINE_BREAKS = str.maketrans({0x2028: "\\u2028", 0x2029: "\\u2029"})


class MaskingRequestHandler(WSGIRequestHandler):
    """werkzeug's request log line, with each write key cut to its first four characters,
    and without werkzeug's colour codes when stderr is not a terminal (a file or a pipe
    would keep the escape sequences as text)."""

    colour = False

    def log(self, type: str, message: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        super().log(type, message, *(arg.translate(_UNICODE_LINE_BREAKS) if isinstance(arg, str) else arg for arg in args))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if getattr(self, "path", "").startswith(REQUESTS_PATH):
            return  # the debugger page asks every second: not worth a line each time
        # Called once the response is written: the request no longer needs its path.
        self.requestline = _WRITE_KEY_IN_QUERY.sub(r"\1…", self.requestline)
        if hasattr(self, "path"):
            self.path = _WRITE_KEY_IN_QUERY.sub(r"\1…", self.path)
        if self.colour:
            super().log_request(code, size)
            return
        try:
            line = f"{self.command} {uri_to_iri(self.path)} {self.request_version}"
        except AttributeError:  # no path: the request line itself was bad
            line = self.requestline
        self.log("info", '"%s" %s %s', line.translate(self._control_char_table), code, size)

    def connection_dropped(self, error: BaseException, environ: Any = None) -> None:
        """A client that resets the connection (one that closes without reading the
        whole answer, as mail scanners do) interrupts werkzeug's drain of the request
        before it closes its selector: an epoll descriptor in a reference cycle, freed
        only when the garbage collector runs; about a third of such requests leaked
        one, past ``ulimit -n`` within a few thousand. Close them now."""
        frames = error.__traceback__
        while frames is not None:
            for value in frames.tb_frame.f_locals.values():
                if isinstance(value, selectors.BaseSelector):
                    value.close()
            frames = frames.tb_next
        super().connection_dropped(error, environ)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _banner(app: PixelApp, args: argparse.Namespace, port: int, write_key: str | None, debugger: bool) -> tuple[str, str]:
    """The start-up text, and the example pixel URL it suggests."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(args.host, args.host)
    origin = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    page, track = (origin + path for path in app.paths)
    lines = [f"pixel-wsgi {__version__} development server (for production, run it under gunicorn)"]
    if write_key is not None:
        db = os.path.abspath(args.db)
        lines += [
            f"  write key: {write_key}",
            f"  events:    stored in {db}; see them with: pixel-wsgi events --db {shlex.quote(db)}",
        ]
        key_text = write_key
    else:
        source = next((s for s in app.config.sources if s.enabled), app.config.sources[0])
        lines.append(f"  config:    {args.config} ({len(app.config.sources)} sources; the example uses source {source.name!r})")
        # A configured write key stays out of the terminal's scrollback: the curl line
        # reads it from the shell instead.
        key_text = "$WRITE_KEY"
    query = f"writeKey={key_text}&anonymousId=curl-user&event=Tried%20It&properties.revenue=9.99"
    lines += [
        f"  page:      {page}",
        f"  track:     {track}",
    ]
    if debugger:
        lines.append(f"  debugger:  {origin}/  (the last requests, live; loopback clients only)")
    lines += [
        "Try it:",
        f'  curl -sS -D - -o /dev/null "{track}?{query}"',
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines), f"{track}?{query}"


def command_events(args: argparse.Namespace) -> int:
    """What the SQLite store holds: a table, or one JSON event per line; with --follow,
    then every event as it arrives (the store may not exist yet: it is waited for)."""
    show = _show_json if args.json else _show_row
    try:
        # Events answered by a server that was killed are in its journal, not yet in the
        # store (which may not even exist any more: they then start a new one).
        recover_journals(args.db)
    except (OSError, sqlite3.Error) as exc:
        print(f"pixel-wsgi: {args.db}: the journals of ended servers stay for now ({exc})", file=sys.stderr)
    if not os.path.exists(args.db) and not args.follow:
        return _fail(f"{args.db}: no such event store (run `pixel-wsgi serve` first, or pass --db FILE)", 1)
    if not args.json:
        print(_table_line(EVENT_COLUMNS), flush=True)
    last = args.last or None
    reader = _StoreReader(args.db, follow=args.follow)
    try:
        while True:
            try:
                for row in reader.rows(last):
                    show(row)
            except sqlite3.Error as exc:
                reader.close()
                # A store the server has created but not set up yet is only a moment away.
                if not (args.follow and "no such table" in str(exc)):
                    return _fail(f"{args.db}: not a pixel-wsgi event store ({exc})", 1)
            if not args.follow:
                if not reader.shown:
                    print(f"{args.db}: no events yet")
                return 0
            last = None
            time.sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        return 0
    finally:
        reader.close()


class _StoreReader:
    """The store's new rows, poll after poll, across an archiving of the file.

    An operator may move or delete the store while the app runs; the workers then
    start a new file at the same path within a second, whose ids start again at 1.
    So this follows the file it opened, not only the path: once another file is at
    the path, the old one is still read for ROTATION_GRACE (rows its workers wrote
    before they noticed), then the new one from its first row.
    """

    def __init__(self, path: str, *, follow: bool) -> None:
        self.path = path
        # Following, an empty file is one being set up: left alone until it has content.
        # Once, it is read (and said to be no event store).
        self.follow = follow
        self.shown = 0
        self._connection: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._after = 0
        self._replaced_at: float | None = None

    def rows(self, last: int | None) -> Iterator[dict[str, Any]]:
        if self._connection is None:
            identity = _file_identity(self.path, empty_too=not self.follow)
            if identity is None:
                return  # --follow before the server has made (or set up) the store
            self._connection, self._identity, self._after = open_reader(self.path), identity, 0
        for row in rows_after(self._connection, self._after, last):
            self._after = row["id"]
            self.shown += 1
            yield row
        if _file_identity(self.path) != self._identity:
            now = time.monotonic()
            if self._replaced_at is None:
                self._replaced_at = now
            elif now - self._replaced_at >= ROTATION_GRACE:
                self.close()  # the next poll opens the file now at the path

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = self._identity = self._replaced_at = None


def _file_identity(path: str, *, empty_too: bool = False) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; ``None`` when there is none, or when it is
    empty and not ``empty_too`` (a file being set up: opening it then could get in the way)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return (status.st_dev, status.st_ino) if status.st_size or empty_too else None


def _show_json(row: dict[str, Any]) -> None:
    print(json.dumps(row["event"], ensure_ascii=False), flush=True)


def _show_row(row: dict[str, Any]) -> None:
    event = row["event"]
    if not isinstance(event, dict):  # a row that is not an event's JSON: say so, go on
        print(_table_line((row["received_at"], row["type"], "(not a JSON event)", "", row["source"])), flush=True)
        return
    label = event.get("event") if row["type"] == "track" else event.get("name")
    user = event.get("userId") or event.get("anonymousId") or ""
    print(_table_line((row["received_at"], row["type"], str(label or "-"), str(user), row["source"])), flush=True)


def _table_line(values: Sequence[str]) -> str:
    """Left-aligned fixed columns; long cells end in an ellipsis, control characters become spaces."""
    cells = [_cell(value, width) for value, width in zip(values, EVENT_COLUMN_WIDTHS)]
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, EVENT_COLUMN_WIDTHS)).rstrip()


def _cell(value: str, width: int) -> str:
    value = one_line(value)
    return value if len(value) <= width else value[: width - 1] + "…"


def command_check_config(args: argparse.Namespace) -> int:
    """Exit 0 with a one-line summary, or 1 with every mistake and its key path."""
    path = args.file or args.config
    if not path:
        return _fail(f"no configuration: pass FILE or set ${CONFIG_ENV_VAR}", 2)
    try:
        config = load_config(path)
    except ConfigError as exc:
        return _config_errors(path, exc)
    destinations = ", ".join(f"{name} ({d.kind})" for name, d in config.destinations.items())
    sources = ", ".join(s.name + ("" if s.enabled else " (disabled)") for s in config.sources)
    print(
        f"{path}: OK: {len(config.sources)} source{'s' if len(config.sources) != 1 else ''} ({sources}), "
        f"{len(config.destinations)} destination{'s' if len(config.destinations) != 1 else ''} ({destinations}), "
        f"prefix {config.prefix or '(none)'}"
    )
    return 0


def _config_errors(path: str, exc: ConfigError) -> int:
    count = len(exc.errors)
    print(f"{path}: {count} mistake{'s' if count != 1 else ''}:", file=sys.stderr)
    for error in exc.errors:
        print(f"  {error}", file=sys.stderr)
    return 1


def _fail(message: str, code: int) -> int:
    print(f"pixel-wsgi: {message}", file=sys.stderr)
    return code


def _spool_config(args: argparse.Namespace) -> Config:
    """The configuration whose spool to work on: ``--config``, or the embedded default's."""
    if args.config:
        return load_config(args.config)
    # The write key plays no part in the spool commands; serve's default makes the same spool path.
    return load_config(default_config("spool-commands", args.db))


def _describe_size(spool: Spool) -> str:
    database, wal = spool.size()
    text = f"{_bytes(database)} of {_bytes(spool.max_bytes)}"
    return text + (f" (+ {_bytes(wal)} write-ahead log)" if wal else "")


def _bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count = count / 1024  # type: ignore[assignment]
    return f"{count:.1f} GiB"


def command_spool_list(args: argparse.Namespace) -> int:
    try:
        config = _spool_config(args)
        spool = Spool(config.spool.path, config.spool.max_bytes)
    except ConfigError as exc:
        return _config_failure(exc)
    try:
        counts = spool.counts() if os.path.exists(spool.path) else {}
    finally:
        spool.close()
    names = list(config.destinations) + sorted(set(counts) - set(config.destinations))
    width = max([len("destination")] + [len(name) for name in names])
    print(f"{'destination':<{width}}  waiting  dead   ({spool.path})")
    for name in names:
        waiting, dead = counts.get(name, (0, 0))
        note = "" if name in config.destinations else "  (not configured)"
        print(f"{name:<{width}}  {waiting:>7}  {dead:>4}{note}")
    origin = "" if args.config else " (the embedded default's; pass --config for another)"
    print(f"spool size: {_describe_size(spool)}{origin}")
    return 0


def command_spool_replay(args: argparse.Namespace) -> int:
    try:
        config = _spool_config(args)
        if args.destination is not None and args.destination not in config.destinations:
            raise ConfigError(f"--destination: no destination named {args.destination!r} in the configuration")
        spool = Spool(config.spool.path, config.spool.max_bytes)
        destinations = {name: settings.build() for name, settings in config.destinations.items()}
    except ConfigError as exc:
        return _config_failure(exc)
    if not os.path.exists(spool.path):
        print(f"the spool {spool.path} is empty")
        return 0
    if not logging.getLogger().handlers:
        # Delivery failures are WARNINGs of pixel_wsgi.replay: show them on stderr.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    lock = DrainLock(spool.path, "pixel-wsgi spool replay")
    try:
        acquired = lock.acquire()
    except OSError as exc:
        return _fail(f"cannot lock the spool for draining: {lock.path}: {exc.strerror or exc}", 1)
    if not acquired:
        holder = lock.current_holder() or "another drainer"
        return _fail(f"{spool.path} is being drained by {holder}; nothing was sent. Try again when it is done.", EX_TEMPFAIL)
    replayer = Replayer(destinations, spool, concurrency=args.concurrency)
    try:
        return _replay_and_report(args, config, replayer)
    except sqlite3.Error as exc:
        # Busy past the busy timeout, or the disk: what was delivered but not yet
        # removed is sent again next time (delivery is at least once).
        return _fail(f"{spool.path}: {exc}; run the replay again", 1)
    finally:
        replayer.close()
        lock.release()
        for destination in destinations.values():
            destination.close()
        spool.close()


def _replay_and_report(args: argparse.Namespace, config: Config, replayer: Replayer) -> int:
    spool = replayer.spool
    names = [args.destination] if args.destination else list(config.destinations)
    for name in names:
        report = replayer.replay(name, dead=args.dead)
        line = f"{name}: {report.delivered} delivered"
        if report.refused:
            line += f", {report.refused} refused (kept as dead)"
        if report.stopped:
            line += f"; stopped: {report.stopped}"
        print(line, flush=True)
    spool.shrink()
    left = 0
    for name, (waiting, dead) in spool.counts().items():
        if args.destination and name != args.destination:
            continue
        if name not in config.destinations:
            print(f"{name}: {waiting + dead} events left for a destination that is not configured")
        left += waiting + (dead if args.dead or name not in config.destinations else 0)
        if dead and not args.dead and name in config.destinations:
            print(f"{name}: {dead} dead events left (replay them with --dead)")
    print(f"{left} events left to deliver" if left else "nothing left to deliver")
    return 1 if left else 0


def _config_failure(exc: Exception) -> int:
    for line in getattr(exc, "errors", [str(exc)]):
        print(f"pixel-wsgi: {line}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    # A user's destination (`type = "myproject.destinations:LogDestination"`) is imported
    # from the current directory, as gunicorn and `python -m` do; a console script's
    # sys.path starts with its own bin folder instead.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
