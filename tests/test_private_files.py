"""Files that hold events are created 0600, whatever the umask; existing files keep their mode.

They hold email addresses, user ids and IP addresses: no other local user may read them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from webtest import TestApp

from pixel_wsgi import PixelApp
from tests.support.delivery import delivery_config, track_url
from tests.support.servers import free_port


@pytest.fixture
def permissive_umask():
    """The umask most systems run with: new files 0644 unless the code says otherwise."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_spool_jsonl_and_their_wal_and_shm_files_are_private(tmp_path, permissive_umask):
    closed_port = free_port()  # nothing listens: every event for "down" is spooled
    config = delivery_config(
        tmp_path,
        {
            "store": {"type": "sqlite", "path": str(tmp_path / "events.sqlite3")},
            "lines": {"type": "jsonl", "path": str(tmp_path / "events.jsonl")},
            "down": {"type": "webhook", "url": f"http://127.0.0.1:{closed_port}", "retries": 0},
        },
        budget=5.0,  # room for a loaded machine: "down" refuses at once, so it costs nothing
    )
    app = PixelApp(config)
    try:
        TestApp(app).get(track_url("m-private"), status=200)
        assert app.flush()
        created = sorted(path.name for path in tmp_path.iterdir())
        assert created == [
            "events.jsonl",
            "events.sqlite3", "events.sqlite3-shm", "events.sqlite3-wal", "events.sqlite3.journals", "events.sqlite3.setup-lock",
            "spool.sqlite3", "spool.sqlite3-shm", "spool.sqlite3-wal", "spool.sqlite3.setup-lock",
        ]  # fmt: skip
        files = [name for name in created if name != "events.sqlite3.journals"]
        assert {name: oct(mode(tmp_path / name)) for name in files} == {name: "0o600" for name in files}
        # The journals' folder and the journal of this process (its events wait there a few milliseconds).
        assert oct(mode(tmp_path / "events.sqlite3.journals")) == "0o700"
        [journal] = (tmp_path / "events.sqlite3.journals").iterdir()
        assert journal.name.endswith(".journal") and oct(mode(journal)) == "0o600"
    finally:
        app.close()


def test_existing_files_keep_their_mode(tmp_path, permissive_umask):
    lines, store = tmp_path / "events.jsonl", tmp_path / "events.sqlite3"
    lines.touch(mode=0o640)
    store.touch(mode=0o640)
    config = delivery_config(tmp_path, {"store": {"type": "sqlite", "path": str(store)}, "lines": {"type": "jsonl", "path": str(lines)}})
    app = PixelApp(config)
    try:
        TestApp(app).get(track_url("m-kept"), status=200)
        assert app.flush()
        assert mode(lines) == mode(store) == 0o640
        # SQLite gives its side files the database's mode.
        assert mode(tmp_path / "events.sqlite3-wal") == 0o640
    finally:
        app.close()
