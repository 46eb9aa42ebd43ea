"""Workers that come and go under load: ``--max-requests`` recycling and a SIGHUP reload.

Each answered event must be in the store (or the spool), every line of the JSON-lines
file must parse, and after a reload our records still reach gunicorn's error log.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.support.delivery import delivery_config, spooled_message_ids, track_url
from tests.support.processes import environment, write_toml
from tests.support.servers import gunicorn, http_get


def stored_message_ids(path: Path) -> set[str]:
    connection = sqlite3.connect(path)
    try:
        return {row[0] for row in connection.execute("SELECT message_id FROM events")}
    finally:
        connection.close()


def config_for(tmp_path: Path) -> dict[str, str]:
    config = delivery_config(
        tmp_path,
        {
            "store": {"type": "sqlite", "path": str(tmp_path / "events.sqlite3")},
            "lines": {"type": "jsonl", "path": str(tmp_path / "events.jsonl")},
        },
    )
    return {**environment(), "PIXEL_WSGI_CONFIG": str(write_toml(tmp_path / "pixel.toml", config))}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "reload"),
    [
        pytest.param(["--max-requests", "15"], False, id="max-requests"),
        pytest.param([], True, id="sighup"),
        pytest.param(["--preload"], True, id="sighup-preload"),
    ],
)
def test_nothing_lost_while_workers_restart(tmp_path, args, reload):
    answered: list[str] = []
    failed: list[str] = []
    with gunicorn(
        "pixel_wsgi:create_app()", output=tmp_path / "gunicorn.log", env=config_for(tmp_path), workers=2, threads=2, args=args
    ) as server:

        def client(number: int) -> None:
            for sent in range(40):
                message_id = f"m-{number}-{sent}"
                try:
                    status = http_get(server.url + track_url(message_id), timeout=30)[0]
                except OSError as exc:  # a refused or reset connection would be a finding
                    failed.append(f"{message_id}: {exc}")
                    continue
                (answered if status == 200 else failed).append(message_id)

        clients = [threading.Thread(target=client, args=(number,)) for number in range(4)]
        for thread in clients:
            thread.start()
        if reload:
            time.sleep(0.3)
            server.process.send_signal(signal.SIGHUP)
        for thread in clients:
            thread.join()
        # A rejection after the restarts still reaches gunicorn's log, with its format.
        assert http_get(server.url + "/pixel/v1/track?writeKey=nope")[0] == 401
        time.sleep(0.2)
        server.stop()
        log = server.log()
    assert failed == []
    assert len(answered) == 160
    lines = [json.loads(line)["messageId"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    spooled = spooled_message_ids(tmp_path / "spool.sqlite3")
    assert set(answered) <= stored_message_ids(tmp_path / "events.sqlite3") | spooled
    assert set(answered) <= set(lines) | spooled
    assert "[INFO] rejected 401 /pixel/v1/track: invalid write key" in log
    if reload:
        assert "Handling signal: hup" in log
    else:
        assert log.count("Autorestarting worker") >= 4
