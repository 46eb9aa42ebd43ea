"""The ``pixel-wsgi`` command: serve, events, check-config, spool list|replay."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from . import __version__
from .config import CONFIG_ENV_VAR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixel-wsgi", description="The RudderStack Pixel API as a WSGI app.")
    parser.add_argument("--version", action="version", version=f"pixel-wsgi {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the development server")
    _add_config_option(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--write-key", help="write key of the embedded default source (without --config)")
    serve.set_defaults(handler=command_serve)

    events = commands.add_parser("events", help="show what the SQLite event store holds")
    events.add_argument("--db", default="pixel-events.sqlite3", help="the SQLite store (default: %(default)s)")
    events.add_argument("--last", type=int, default=20, metavar="N", help="show the last N events (default: %(default)s)")
    events.add_argument("--json", action="store_true", help="one JSON event per line")
    events.set_defaults(handler=command_events)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", nargs="?", help=f"the TOML file (default: ${CONFIG_ENV_VAR})")
    check.set_defaults(handler=command_check_config)

    spool = commands.add_parser("spool", help="inspect and replay undelivered events")
    spool_commands = spool.add_subparsers(dest="spool_command", required=True, metavar="SUBCOMMAND")
    spool_list = spool_commands.add_parser("list", help="counts per destination, dead or not")
    _add_config_option(spool_list)
    spool_list.set_defaults(handler=command_spool_list)
    replay = spool_commands.add_parser("replay", help="re-send spooled events; remove what is delivered")
    _add_config_option(replay)
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


def command_serve(args: argparse.Namespace) -> int:
    raise NotImplementedError  # issue 4


def command_events(args: argparse.Namespace) -> int:
    raise NotImplementedError  # issue 4


def command_check_config(args: argparse.Namespace) -> int:
    raise NotImplementedError  # issue 4


def command_spool_list(args: argparse.Namespace) -> int:
    from .config import load_config
    from .destinations import validate_destination
    from .errors import ConfigError
    from .spool import Spool

    try:
        config = load_config(args.config, validate_destination=validate_destination)
        spool = Spool(config.spool.path)
        spool.check()
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
    return 0


def command_spool_replay(args: argparse.Namespace) -> int:
    import logging

    from .config import load_config
    from .destinations import build_destination, validate_destination
    from .dispatch import Dispatcher
    from .errors import ConfigError
    from .spool import Spool

    try:
        config = load_config(args.config, validate_destination=validate_destination)
        if args.destination is not None and args.destination not in config.destinations:
            raise ConfigError(f"--destination: no destination named {args.destination!r} in the configuration")
        spool = Spool(config.spool.path)
        spool.check()
        destinations = {name: build_destination(settings) for name, settings in config.destinations.items()}
    except ConfigError as exc:
        return _config_failure(exc)
    if not logging.getLogger().handlers:
        # Delivery failures are WARNINGs of pixel_wsgi.dispatch: show them on stderr.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    dispatcher = Dispatcher(destinations, spool, config.dispatch)
    try:
        if not os.path.exists(spool.path):
            print(f"the spool {spool.path} is empty")
            return 0
        names = [args.destination] if args.destination else list(config.destinations)
        for name in names:
            report = dispatcher.replay(name, dead=args.dead)
            line = f"{name}: {report.delivered} delivered"
            if report.refused:
                line += f", {report.refused} refused (kept as dead)"
            if report.stopped:
                line += f"; stopped: {report.stopped}"
            print(line)
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
    finally:
        dispatcher.close()


def _config_failure(exc: Exception) -> int:
    for line in getattr(exc, "errors", [str(exc)]):
        print(f"pixel-wsgi: {line}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
