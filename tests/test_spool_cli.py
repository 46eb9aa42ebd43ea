"""``pixel-wsgi spool list`` and ``spool replay``, run as real subprocesses."""

from __future__ import annotations

import json
import re

import pytest
from webtest import TestApp

from pixel_wsgi import PixelApp
from pixel_wsgi.spool import Spool
from tests.support.delivery import delivery_config, track_url
from tests.support.processes import run_cli, write_toml
from tests.support.sink import Reply, Sink


@pytest.fixture
def down_then_back(tmp_path):
    """A sink that is down while 5 events are sent (they are spooled), then back up."""
    sink = Sink().start()
    sink.stop()
    config = delivery_config(tmp_path, {"hook": {"type": "webhook", "url": sink.url, "timeout": 0.5, "retries": 0}})
    app = PixelApp(config)
    client = TestApp(app)
    message_ids = [f"m-{number}" for number in range(5)]
    try:
        for message_id in message_ids:
            client.get(track_url(message_id), status=200)
    finally:
        app.close()
    config_path = write_toml(tmp_path / "pixel.toml", config)
    sink.start()
    yield sink, config_path, message_ids, config["spool"]["path"]
    sink.stop()


def test_destination_down_spooled_then_replayed(down_then_back):
    sink, config_path, message_ids, _ = down_then_back
    listed = run_cli("spool", "list", "--config", str(config_path))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split() == ["hook", "5", "0"]

    replayed = run_cli("spool", "replay", "--config", str(config_path))
    assert replayed.returncode == 0, replayed.stderr
    assert "hook: 5 delivered" in replayed.stdout
    # Same messageIds, each once (eight at a time: not necessarily in order).
    assert sorted(sink.delivered_message_ids()) == message_ids
    assert run_cli("spool", "list", "--config", str(config_path)).stdout.splitlines()[1].split() == ["hook", "0", "0"]


def test_replay_stops_at_a_failure_and_keeps_the_rest(down_then_back):
    sink, config_path, message_ids, spool_path = down_then_back
    sink.script(Reply(200), Reply(200), Reply(503))
    # One at a time: the spool's order, and nothing sent after the failure.
    replayed = run_cli("spool", "replay", "--concurrency", "1", "--config", str(config_path))
    assert replayed.returncode == 1
    assert "hook: 2 delivered; stopped: HTTP 503 (messageId m-2)" in replayed.stdout
    assert "3 events left to deliver" in replayed.stdout
    assert "WARNING" in replayed.stderr and "m-2" in replayed.stderr
    spool = Spool(spool_path)
    try:
        assert [(row.message_id, row.attempts) for row in spool.all()] == [("m-2", 2), ("m-3", 1), ("m-4", 1)]
    finally:
        spool.close()


def test_refused_events_become_dead_and_need_dead_to_replay(down_then_back):
    sink, config_path, message_ids, _ = down_then_back
    sink.script(Reply(400))
    first = run_cli("spool", "replay", "--config", str(config_path))
    assert "hook: 4 delivered, 1 refused (kept as dead)" in first.stdout
    assert "1 dead events left (replay them with --dead)" in first.stdout
    assert first.returncode == 0  # nothing waiting; dead events are only retried when asked
    assert run_cli("spool", "list", "--config", str(config_path)).stdout.splitlines()[1].split() == ["hook", "0", "1"]

    second = run_cli("spool", "replay", "--destination", "hook", "--dead", "--config", str(config_path))
    assert second.returncode == 0, second.stdout
    assert "hook: 1 delivered" in second.stdout
    assert sorted(sink.delivered_message_ids()) == message_ids


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["replay", "--destination", "nope"], "--destination: no destination named 'nope'", id="unknown-destination"),
        pytest.param(["list"], "sources", id="bad-config"),
    ],
)
def test_spool_commands_report_config_errors(tmp_path, args, message):
    config = delivery_config(tmp_path, {"m": {"type": "memory"}})
    if args == ["list"]:
        del config["sources"]
    path = write_toml(tmp_path / "pixel.toml", config)
    result = run_cli("spool", *args, "--config", str(path))
    assert result.returncode == 2
    assert message in result.stderr


def test_spool_commands_without_a_configuration_use_the_embedded_default(tmp_path):
    """`serve` without --config spools beside its --db; list and replay find that spool too."""
    db = tmp_path / "pixel-events.sqlite3"
    spool = Spool(str(tmp_path / "pixel-spool.sqlite3"))
    try:
        for number in range(3):
            body = f'{{"type":"track","event":"Opened","messageId":"e-{number}","anonymousId":"a"}}'.encode()
            spool.add("events", f"e-{number}", "default", body, attempts=1, error="database is locked")
    finally:
        spool.close()

    listed = run_cli("spool", "list", "--db", str(db))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split() == ["events", "3", "0"]
    assert "the embedded default's" in listed.stdout

    replayed = run_cli("spool", "replay", "--db", str(db))
    assert replayed.returncode == 0, replayed.stderr
    assert "events: 3 delivered" in replayed.stdout
    stored = run_cli("events", "--db", str(db), "--json")
    assert sorted(json.loads(line)["messageId"] for line in stored.stdout.splitlines()) == ["e-0", "e-1", "e-2"]


def test_spool_list_shows_the_size_and_the_bound(down_then_back):
    _, config_path, _, _ = down_then_back
    listed = run_cli("spool", "list", "--config", str(config_path))
    assert re.search(r"^spool size: [\d.]+ KiB of 1\.0 GiB", listed.stdout, re.M), listed.stdout


def test_concurrency_must_be_positive(down_then_back):
    _, config_path, _, _ = down_then_back
    result = run_cli("spool", "replay", "--concurrency", "0", "--config", str(config_path))
    assert result.returncode == 2 and "--concurrency: must be 1 or more" in result.stderr
