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
    raise NotImplementedError  # issue 3


def command_spool_replay(args: argparse.Namespace) -> int:
    raise NotImplementedError  # issue 3


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
