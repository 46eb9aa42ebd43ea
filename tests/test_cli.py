"""The pixel-wsgi command: serve (a real subprocess on a free port), events, check-config."""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pixel_wsgi.cli import main

from .support.servers import http_get, server_process

PIXEL_WSGI = str(Path(sys.executable).with_name("pixel-wsgi"))
TRACK_URL = re.compile(r"track:\s+(http://127\.0\.0\.1:\d+)/\S*track\n")
CURL_LINE = re.compile(r'curl -sS -D - -o /dev/null "([^"]+)"')


def serve_ready(log: str) -> str | None:
    match = TRACK_URL.search(log)
    return match.group(1) if match else None


def serve(tmp_path: Path, *arguments: str):
    command = [PIXEL_WSGI, "serve", "--port", "0", *arguments]
    return server_process(command, output=tmp_path / "serve.log", cwd=tmp_path, ready=serve_ready, env={"PIXEL_WSGI_CONFIG": ""})


def run(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PIXEL_WSGI, *arguments], cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.mark.slow
def test_serve_stores_events_that_the_events_command_shows(tmp_path):
    db = tmp_path / "events.sqlite3"
    with serve(tmp_path, "--write-key", "cli-test-key", "--db", str(db)) as server:
        status, headers, body = http_get(
            f"{server.url}/pixel/v1/track?writeKey=cli-test-key&anonymousId=anon-1&event=Signed%20Up&properties.revenue=9.5"
        )
        assert (status, headers["content-type"], len(body)) == (200, "image/gif", 43)
        status, _, body = http_get(f"{server.url}/pixel/v1/page?writeKey=wrong-key&anonymousId=anon-1")
        assert (status, body) == (401, b"invalid write key")
        assert server.stop(signal.SIGINT) == 0  # Ctrl-C
    log = server.log()
    assert "write key: cli-test-key" in log
    assert f"page:      {server.url}/pixel/v1/page" in log
    assert "rejected 401 /pixel/v1/page: invalid write key" in log  # logging is configured
    assert "writeKey=cli-…&anonymousId" in log and "writeKey=cli-test-key&" not in log.split("Press Ctrl-C")[1]
    assert log.rstrip().endswith("pixel-wsgi: stopped")

    table = run("events", "--db", str(db), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["TIME", "TYPE", "EVENT/NAME", "USER", "SOURCE"]
    assert re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z\s+track\s+Signed Up\s+anon-1\s+default$", row)

    lines = run("events", "--db", str(db), "--json", cwd=tmp_path).stdout.splitlines()
    [event] = [json.loads(line) for line in lines]
    assert (event["event"], event["properties"], event["context"]["ip"]) == ("Signed Up", {"revenue": 9.5}, "127.0.0.1")


@pytest.mark.slow
def test_serve_without_a_write_key_generates_one_and_its_curl_line_works(tmp_path):
    with serve(tmp_path) as server:
        log = server.log()
        write_key = re.search(r"write key: (\S+)", log).group(1)
        assert len(write_key) >= 20
        url = shlex.split(CURL_LINE.search(log).group(0))[-1]
        assert f"writeKey={write_key}&" in url
        status, _, _ = http_get(url)
        assert status == 200
        assert server.stop() == 0  # SIGTERM ends it as cleanly as Ctrl-C
    [row] = _rows(tmp_path / "pixel-events.sqlite3")
    assert row["event"] == "Tried It" and row["properties"] == {"revenue": 9.99}


@pytest.mark.slow
def test_serve_with_a_config_file(tmp_path):
    config = tmp_path / "pixel.toml"
    config.write_text(
        'prefix = "/px"\nresponse_body = "ok"\n'
        '[[sources]]\nname = "site"\nwrite_key = "configured-key"\n'
        f'[destinations.store]\ntype = "sqlite"\npath = "{tmp_path / "store.sqlite3"}"\n'
    )
    with serve(tmp_path, "--config", str(config)) as server:
        status, _, body = http_get(f"{server.url}/px/track?writeKey=configured-key&userId=u1&event=Configured")
        assert (status, body) == (200, b"OK")
        assert server.stop() == 0
    log = server.log()
    assert "config:    " in log and "'site'" in log
    assert "writeKey=$WRITE_KEY" in log and "configured-key" not in log.split("Press Ctrl-C")[0]
    assert [row["event"] for row in _rows(tmp_path / "store.sqlite3")] == ["Configured"]


def test_serve_refuses_a_bad_config_with_its_key_paths(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('[[sources]]\nname = "x"\n[destinations.d]\ntype = "sqlite"\n')
    assert main(["serve", "--config", str(config), "--port", "0"]) == 1
    assert "sources[0].write_key: required" in capsys.readouterr().err


def test_serve_refuses_write_key_with_config(tmp_path, capsys):
    assert main(["serve", "--config", str(tmp_path / "x.toml"), "--write-key", "k"]) == 2
    assert "--write-key is for the embedded default" in capsys.readouterr().err


def test_serve_refuses_a_db_in_a_missing_folder(tmp_path, capsys):
    assert main(["serve", "--db", str(tmp_path / "nowhere" / "events.sqlite3"), "--port", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_serve_reports_a_port_in_use(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--db", str(tmp_path / "e.sqlite3"), "--port", str(port)]) == 1
    assert f"Port {port} is in use" in capsys.readouterr().err


def _rows(db: Path) -> list[dict]:
    with sqlite3.connect(db) as connection:
        events = [json.loads(text) for (text,) in connection.execute("SELECT event FROM events ORDER BY id")]
    connection.close()
    return events


# -- events ---------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    """An event store with three events written by the sqlite destination itself."""
    from webtest import TestApp

    from pixel_wsgi import PixelApp

    db = tmp_path / "events.sqlite3"
    app = PixelApp({"sources": [{"name": "web", "write_key": "k"}], "destinations": {"db": {"type": "sqlite", "path": str(db)}}})
    client = TestApp(app)
    client.get("/pixel/v1/page?writeKey=k&anonymousId=a1&name=Home")
    client.get("/pixel/v1/track?writeKey=k&anonymousId=a1&userId=u1&event=Clicked%0Athe%20button")
    client.get("/pixel/v1/track?writeKey=k&anonymousId=a2&event=" + "x" * 60)
    app.close()
    return db


def test_events_table_shows_the_last_n(store, capsys):
    assert main(["events", "--db", str(store), "--last", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[1].split()[1:] == ["track", "Clicked", "the", "button", "u1", "web"]  # userId first; newline flattened
    assert ("x" * 19 + "…") in lines[2]  # cut to its column: rows print as they are read


def test_events_zero_means_all(store, capsys):
    assert main(["events", "--db", str(store), "--last", "0", "--json"]) == 0
    names = [json.loads(line).get("name") or json.loads(line)["event"][:7] for line in capsys.readouterr().out.splitlines()]
    assert names == ["Home", "Clicked", "xxxxxxx"]


def test_a_row_that_is_not_json_is_shown_and_the_listing_goes_on(store, capsys):
    """Regression: a row written by another program (not an event's JSON) ended
    `pixel-wsgi events` with a traceback, in the middle of `--follow` too."""
    connection = sqlite3.connect(store)
    connection.execute(
        "INSERT INTO events (received_at, type, message_id, source, event) VALUES ('2026-01-01T00:00:00.000Z', 'track', 'm', 'other', 'x' )"
    )
    connection.commit()
    connection.close()
    assert main(["events", "--db", str(store), "--last", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(not a JSON event)" in lines[-1] and "other" in lines[-1]
    assert main(["events", "--db", str(store), "--last", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == "x"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        pytest.param(lambda db: None, "no such event store", id="missing"),
        pytest.param(
            lambda db: db.write_text("not a database at all, not even close to one"), "not a pixel-wsgi event store", id="not-sqlite"
        ),
        pytest.param(lambda db: sqlite3.connect(db).close(), "not a pixel-wsgi event store", id="no-table"),
    ],
)
def test_events_without_a_store_fails_clearly(tmp_path, capsys, setup, message):
    db = tmp_path / "events.sqlite3"
    setup(db)
    assert main(["events", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_events_on_an_empty_store(tmp_path, capsys):
    from pixel_wsgi.destinations.sqlite import connect

    connect(str(tmp_path / "e.sqlite3")).close()
    assert main(["events", "--db", str(tmp_path / "e.sqlite3")]) == 0
    assert "no events yet" in capsys.readouterr().out


# -- check-config -----------------------------------------------------------------

GOOD = """
prefix = "/pixel/v1"
[[sources]]
name = "newsletter"
write_key = "${NEWSLETTER_KEY}"
errors_as_pixel = true
[[sources]]
name = "old"
write_key = "old-key"
enabled = false
[destinations.archive]
type = "sqlite"
path = "archive.sqlite3"
"""

BAD = """
prefix = "pixel"
response_body = "html"
[limits]
max_params = "many"
[[sources]]
name = "newsletter"
ip = "hide"
destinations = ["nowhere"]
[destinations.archive]
type = "sqlite"
"""


def test_check_config_good_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_KEY", "secret-key")
    (tmp_path / "good.toml").write_text(GOOD)
    assert main(["check-config", str(tmp_path / "good.toml")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "OK: 2 sources (newsletter, old (disabled)), 1 destination (archive (sqlite)), prefix /pixel/v1" in out
    assert "secret-key" not in out


def test_check_config_reports_every_mistake_with_its_key_path(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text(BAD)
    assert main(["check-config", str(tmp_path / "bad.toml")]) == 1
    err = capsys.readouterr().err
    for key_path in (
        "prefix:",
        "response_body:",
        "limits.max_params:",
        "sources[0].write_key: required",
        "sources[0].ip:",
        "sources[0].destinations[0]:",
    ):
        assert f"  {key_path}" in err, key_path
    assert err.startswith(f"{tmp_path / 'bad.toml'}: 6 mistakes:")


def test_check_config_reads_the_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "good.toml").write_text(GOOD)
    monkeypatch.delenv("NEWSLETTER_KEY", raising=False)
    monkeypatch.setenv("PIXEL_WSGI_CONFIG", str(tmp_path / "good.toml"))
    result = run("check-config", cwd=tmp_path)  # the env default is read when the parser is built
    assert result.returncode == 1
    assert "sources[0].write_key: environment variable NEWSLETTER_KEY is not set" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "cannot read", id="missing-file"),
        pytest.param("prefix = [", "not valid TOML", id="not-toml"),
    ],
)
def test_check_config_unreadable_files(tmp_path, capsys, content, message):
    path = tmp_path / "c.toml"
    if content is not None:
        path.write_text(content)
    assert main(["check-config", str(path)]) == 1
    assert message in capsys.readouterr().err


def test_check_config_without_a_file(capsys, monkeypatch):
    monkeypatch.delenv("PIXEL_WSGI_CONFIG", raising=False)
    assert main(["check-config"]) == 2
    assert "no configuration" in capsys.readouterr().err


def test_python_dash_m_is_the_same_program(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pixel_wsgi", "--version"], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip().startswith("pixel-wsgi ")
