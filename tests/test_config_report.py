"""One run reports every mistake, the same way for check-config, create_app and serve;
and the rough edges a newcomer met on the command line.

Regression tests for what the hand-written configuration reader did: four of five
mistakes reported (destinations were only checked when nothing else was wrong), a
duplicate write key hiding two other errors, folders of file destinations never
checked, the spool folder checked by ``serve`` but not by ``check-config``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pixel_wsgi import ConfigError, PixelApp
from pixel_wsgi.cli import main
from pixel_wsgi.destinations.sqlite import read_events

PIXEL_WSGI = str(Path(sys.executable).with_name("pixel-wsgi"))
PACKAGE = Path(__file__).resolve().parents[1] / "pixel_wsgi"

FIVE_MISTAKES = """
    prefix = "pixel"

    [spool]
    path = "{tmp}/no-such-folder/spool.sqlite3"

    [[sources]]
    name = "a"
    write_key = "same-key"
    destinations = ["archive", "nowhere"]

    [[sources]]
    name = "b"
    write_key = "same-key"

    [destinations.archive]
    type = "jsonl"
    path = "{tmp}/missing-logs/events.jsonl"

    [destinations.hook]
    type = "webhook"
    timeout = "5"
"""
EXPECTED = [
    "prefix: must start with '/' and not end with '/' (or be empty)",
    "spool.path: the folder {tmp}/no-such-folder does not exist",
    "destinations.archive.path: the folder {tmp}/missing-logs does not exist",
    "destinations.hook.timeout: must be a number, not str",
    "destinations.hook.url: required",
    "sources[0].destinations[1]: no destination named 'nowhere'",
    "sources[1].write_key: same write key as sources[0]",
]


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "pixel.toml"
    path.write_text(textwrap.dedent(FIVE_MISTAKES.format(tmp=tmp_path)))
    return path


def expected(tmp_path: Path) -> list[str]:
    return sorted(line.format(tmp=tmp_path) for line in EXPECTED)


def test_one_run_reports_every_mistake(bad_config, tmp_path):
    with pytest.raises(ConfigError) as raised:
        PixelApp(str(bad_config))
    assert sorted(raised.value.errors) == expected(tmp_path)


def test_check_config_and_serve_report_the_same_mistakes(bad_config, tmp_path, capsys):
    assert main(["check-config", str(bad_config)]) == 1
    check = capsys.readouterr().err
    assert main(["serve", "--config", str(bad_config), "--port", "0"]) == 1
    serve = capsys.readouterr().err
    for line in expected(tmp_path):
        assert f"  {line}\n" in check
        assert f"  {line}\n" in serve
    assert check.splitlines()[0].endswith(f"{len(EXPECTED)} mistakes:")


def test_a_source_that_is_not_a_table_keeps_the_others_numbered(tmp_path):
    config = {
        "sources": ["not a table", {"name": "b", "write_key": "k"}, {"name": "b", "write_key": "k2"}],
        "destinations": {"m": {"type": "memory"}},
    }
    with pytest.raises(ConfigError) as raised:
        PixelApp(config)
    assert raised.value.errors == ["sources[0]: must be a table", "sources[2].name: 'b' is also the name of sources[1]"]


def test_a_custom_destination_options_are_checked_in_the_same_report():
    config = {
        "prefix": "bad",
        "sources": [{"name": "a", "write_key": "k"}],
        "destinations": {"mine": {"type": "tests.test_destinations:ListDestination", "colour": "red"}},
    }
    with pytest.raises(ConfigError) as raised:
        PixelApp(config)
    assert sorted(raised.value.errors) == [
        "destinations.mine.colour: unknown option",
        "destinations.mine.label: required",
        "prefix: must start with '/' and not end with '/' (or be empty)",
    ]


def test_each_destination_is_built_once(tmp_path):
    """The old reader built every destination twice: once to validate it, once to use it."""
    Counting.built = 0
    app = PixelApp({"sources": [{"name": "a", "write_key": "k"}], "destinations": {"c": {"type": "tests.test_config_report:Counting"}}})
    app.close()
    assert Counting.built == 1


from pixel_wsgi.destinations import Destination  # noqa: E402  (the class above needs it at import)


class Counting(Destination):
    built = 0

    def __init__(self, name: str, options: object) -> None:
        super().__init__(name, options)
        type(self).built += 1

    def deliver(self, payload: object) -> None:
        pass


# -- the command line as a newcomer meets it ----------------------------------------


def test_a_destination_class_is_imported_from_the_current_directory(tmp_path):
    """`type = "myproject.destinations:LogDestination"`, as the README shows, under the
    console script (whose sys.path starts with its bin folder, not the current one)."""
    package = tmp_path / "myproject"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "destinations.py").write_text(
        "from pixel_wsgi.destinations import Destination\n\nclass LogDestination(Destination):\n    def deliver(self, payload):\n        print(payload.body)\n"
    )
    (tmp_path / "pixel.toml").write_text(
        '[[sources]]\nname = "s"\nwrite_key = "k"\n[destinations.log]\ntype = "myproject.destinations:LogDestination"\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIXEL_WSGI_CONFIG")}
    result = subprocess.run([PIXEL_WSGI, "check-config", "pixel.toml"], cwd=tmp_path, capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    assert "log (myproject.destinations:LogDestination)" in result.stdout


@pytest.mark.parametrize(
    ("port", "message"),
    [("99999", "must be from 0 to 65535, not 99999"), ("-1", "must be from 0 to 65535, not -1"), ("http", "not a port number: 'http'")],
)
def test_serve_refuses_a_port_out_of_range(port, message, tmp_path):
    result = subprocess.run([PIXEL_WSGI, "serve", "--port", port], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_access_log_has_no_colour_codes_when_stderr_is_a_file(tmp_path):
    from .support.servers import http_get, server_process
    from .test_cli import serve_ready

    log = tmp_path / "serve.log"
    command = [PIXEL_WSGI, "serve", "--port", "0", "--write-key", "k-colour"]
    with server_process(command, output=log, cwd=tmp_path, ready=serve_ready, env={"PIXEL_WSGI_CONFIG": ""}) as server:
        assert http_get(f"{server.url}/pixel/v1/track?writeKey=nope-key&anonymousId=a&event=E")[0] == 401
        assert http_get(f"{server.url}/nothing-here")[0] == 404
    text = log.read_text()
    assert '"GET /pixel/v1/track?writeKey=nope…&anonymousId=a&event=E HTTP/1.1" 401' in text
    assert '"GET /nothing-here HTTP/1.1" 404' in text
    assert "\x1b[" not in text


def test_events_follow_shows_events_as_they_arrive(tmp_path):
    from webtest import TestApp

    db = tmp_path / "events.sqlite3"
    # Started before the store exists, as a newcomer would in a second terminal.
    follower = subprocess.Popen([PIXEL_WSGI, "events", "--db", str(db), "--follow", "--json"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        app = PixelApp({"sources": [{"name": "s", "write_key": "k"}], "destinations": {"db": {"type": "sqlite", "path": str(db)}}})
        client = TestApp(app)
        seen = []
        for number in range(3):
            client.get(f"/pixel/v1/track?writeKey=k&anonymousId=a&event=E{number}&messageId=m-{number}")
            assert follower.stdout is not None
            seen.append(__import__("json").loads(follower.stdout.readline())["messageId"])
        app.close()
        assert seen == ["m-0", "m-1", "m-2"]
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        if follower.stdout is not None:
            follower.stdout.close()


def test_events_follow_goes_on_across_an_archived_store(tmp_path):
    """Found by a fresh-eyes attack: after the store was moved away (with its -wal and
    -shm files) and the app started a new one, --follow went on from the old file's last
    id in the new file, whose ids start again at 1: it skipped events in both files."""
    from webtest import TestApp

    db = tmp_path / "events.sqlite3"
    app = PixelApp({"sources": [{"name": "s", "write_key": "k"}], "destinations": {"db": {"type": "sqlite", "path": str(db)}}})
    client = TestApp(app)

    def send(*numbers: int) -> None:
        for number in numbers:
            client.get(f"/pixel/v1/track?writeKey=k&anonymousId=a&event=E&messageId=m-{number}", status=200)

    send(0, 1, 2, 3, 4)
    follower = subprocess.Popen([PIXEL_WSGI, "events", "--db", str(db), "--follow", "--json"], stdout=subprocess.PIPE, text=True)
    shown: list[str] = []
    reader = threading.Thread(target=lambda: shown.extend(json.loads(line)["messageId"] for line in follower.stdout), daemon=True)
    reader.start()
    try:
        # The follower must have read the first file before it is archived (a loaded
        # machine can take over a second to start it).
        deadline = time.monotonic() + 30
        while len(shown) < 5:
            assert time.monotonic() < deadline and follower.poll() is None, shown
            time.sleep(0.05)
        send(5)
        for suffix in ("", "-wal", "-shm"):
            os.rename(f"{db}{suffix}", tmp_path / f"archived.sqlite3{suffix}")
        send(6)  # the app has not noticed yet: into the archived file
        time.sleep(1.2)
        send(7, 8)  # a new file, ids from 1
        time.sleep(3.5)  # ROTATION_GRACE and two polls
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        reader.join(10)
        assert follower.stdout is not None
        follower.stdout.close()
        app.close()
    assert shown == [f"m-{number}" for number in range(9)]
    archived = [row["message_id"] for row in read_events(str(tmp_path / "archived.sqlite3"))]
    assert archived == [f"m-{number}" for number in range(7)]


def test_events_reads_a_large_store_row_by_row(tmp_path):
    """`pixel-wsgi events --last 0` on a big store printed nothing until all of it was in
    memory (119 MB for 21k rows); now its peak memory does not grow with the store."""
    db = tmp_path / "events.sqlite3"
    import sqlite3

    from pixel_wsgi.destinations.sqlite import SCHEMA

    def peak_kb(rows: int) -> int:
        with sqlite3.connect(db) as connection:
            connection.executescript(SCHEMA)
            big = '{"type":"track","event":"E","anonymousId":"a","properties":{"blob":"' + "x" * 4000 + '"}}'
            connection.executemany(
                "INSERT INTO events (received_at, type, message_id, source, event) VALUES (?, ?, ?, ?, ?)",
                [("2026-01-01T00:00:00.000Z", "track", f"m-{i}", "s", big) for i in range(rows)],
            )
        probe = (
            "import resource, sys; from pixel_wsgi.cli import main; "
            "sys.stdout = open('/dev/null', 'w'); main(['events', '--db', sys.argv[1], '--last', '0', '--json']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
        )
        result = subprocess.run([sys.executable, "-c", probe, str(db)], capture_output=True, text=True, timeout=60, check=True)
        return int(result.stderr.strip().splitlines()[-1])

    small = peak_kb(500)
    large = peak_kb(20_000)  # 20,500 rows of 4 KB: 80 MB of events
    assert large - small < 20_000, (small, large)


# -- the package's own shape ------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    """The pixel_wsgi modules that ``path`` imports at import time (not under TYPE_CHECKING)."""
    module = "pixel_wsgi." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    module = module.removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("pixel_wsgi"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("pixel_wsgi"))
    return found


def test_no_import_cycles():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = "pixel_wsgi." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {name: {target for target in _imports(path) if target in modules and target != name} for name, path in modules.items()}
    # The package's __init__ re-exports the public names: importing it is the user's
    # entry point, never something a module of the package does.
    for name, targets in graph.items():
        assert "pixel_wsgi" not in targets or name == "pixel_wsgi", f"{name} imports the package's __init__ (a cycle through it)"
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join([*visiting[visiting.index(name) :], name])
        visiting.append(name)
        for target in sorted(graph[name]):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_code_and_docs_stand_alone():
    """No comment or docstring points to a document outside the repository."""
    import re

    root = PACKAGE.parent
    outside = re.compile(r"SPEC\b|§|\bseed\s*(?:document|file|\d)|\bissue \d")
    found = []
    for path in [*PACKAGE.rglob("*.py"), *(root / "tests").rglob("*.py"), *(root / "examples").glob("*"), root / "README.md"]:
        if path.is_file() and path.name != "test_config_report.py":
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if outside.search(line):
                    found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert found == []
