"""``dedupe_window``: a repeated messageId is answered 200 and delivered once, across processes."""

from __future__ import annotations

import logging
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from webtest import TestApp

from pixel_wsgi import PixelApp
from pixel_wsgi.dedupe import PURGE_EVERY, DedupeStore
from pixel_wsgi.destinations.sqlite import read_events
from pixel_wsgi.errors import ConfigError
from pixel_wsgi.observer import Observer
from pixel_wsgi.responses import TRANSPARENT_GIF
from pixel_wsgi.testing import memory_app

from .support.processes import environment, write_toml
from .support.servers import gunicorn, http_get

OPEN = "/pixel/v1/track?writeKey=test-write-key&userId=reader-1&event=Email%20Opened&messageId="


@pytest.fixture
def deduped(tmp_path):
    app, events = memory_app(dedupe_window=3600, spool={"path": str(tmp_path / "spool.sqlite3")})
    yield TestApp(app), events, app
    app.close()


def test_a_repeated_message_id_is_answered_and_delivered_once(deduped, caplog):
    caplog.set_level(logging.INFO, logger="pixel_wsgi")
    client, events, _ = deduped
    first = client.get(OPEN + "open-1")
    second = client.get(OPEN + "open-1")
    client.get(OPEN + "open-2")
    assert first.body == second.body == TRANSPARENT_GIF
    assert [event["messageId"] for event in events] == ["open-1", "open-2"]
    assert "duplicate messageId open-1" in caplog.text


def test_events_without_a_message_id_are_never_deduplicated(deduped, tmp_path):
    client, events, _ = deduped
    for _ in range(3):
        client.get("/pixel/v1/track?writeKey=test-write-key&userId=reader-1&event=Email%20Opened")
    assert len({event["messageId"] for event in events}) == 3
    # Nothing to remember: the file is not even created.
    assert not (tmp_path / "spool.sqlite3.dedupe").exists()


def test_sources_are_deduplicated_separately(tmp_path):
    app = PixelApp(
        {
            "sources": [
                {"name": "a", "write_key": "key-a", "dedupe_window": 60},
                {"name": "b", "write_key": "key-b", "dedupe_window": 60},
                {"name": "c", "write_key": "key-c"},
            ],
            "destinations": {"memory": {"type": "memory"}},
            "spool": {"path": str(tmp_path / "spool.sqlite3")},
        }
    )
    client = TestApp(app)
    for key in ("key-a", "key-b", "key-c", "key-a", "key-b", "key-c"):
        client.get(f"/pixel/v1/track?writeKey={key}&userId=u&event=x&messageId=same")
    assert len(app.destination("memory").events) == 4  # type: ignore[attr-defined]
    app.close()


def test_the_file_is_private_and_beside_the_spool(deduped, tmp_path):
    client, _, _ = deduped
    client.get(OPEN + "open-1")
    path = tmp_path / "spool.sqlite3.dedupe"
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if name.exists() or name == path:
            assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name


def test_the_path_is_configurable_and_checked(tmp_path):
    app, events = memory_app(dedupe_window=10, dedupe={"path": str(tmp_path / "seen.sqlite3")})
    TestApp(app).get(OPEN + "x")
    assert (tmp_path / "seen.sqlite3").exists()
    app.close()
    with pytest.raises(ConfigError, match="dedupe.path: the folder .* does not exist"):
        memory_app(dedupe_window=10, dedupe={"path": str(tmp_path / "missing" / "seen.sqlite3")})
    with pytest.raises(ConfigError, match=r"sources\[0\].dedupe_window: must be a number"):
        memory_app(dedupe_window="1h")
    with pytest.raises(ConfigError, match="dedupe.pth: unknown option"):
        memory_app(dedupe={"pth": "x"})


def test_the_window_ends(tmp_path):
    store = DedupeStore(str(tmp_path / "seen.sqlite3"))
    try:
        assert store.claim("s", "m", 60, now=1000.0) is True
        assert store.claim("s", "m", 60, now=1059.0) is False
        # After the window the id is new again, and starts a new window.
        assert store.claim("s", "m", 60, now=1060.0) is True
        assert store.claim("s", "m", 60, now=1100.0) is False
    finally:
        store.close()


def test_expired_rows_are_purged(tmp_path):
    store = DedupeStore(str(tmp_path / "seen.sqlite3"))
    try:
        for number in range(PURGE_EVERY - 1):
            store.claim("s", f"old-{number}", 1, now=1000.0)
        store.claim("s", "new", 60, now=2000.0)  # the PURGE_EVERY-th claim
        count = store._connection().execute("SELECT COUNT(*) FROM seen").fetchone()[0]
        assert count == 1
    finally:
        store.close()


def test_a_lost_event_can_be_retried(tmp_path):
    """A 503 releases the claim: the client's retry is delivered, not swallowed as a duplicate."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    spool = tmp_path / "spool.sqlite3"
    app = PixelApp(
        {
            "sources": [{"name": "s", "write_key": "test-write-key", "dedupe_window": 3600}],
            "destinations": {"down": {"type": "webhook", "url": "http://127.0.0.1:9/", "timeout": 0.2, "retries": 0}},
            "spool": {"path": str(spool)},
            "dedupe": {"path": str(tmp_path / "seen.sqlite3")},
        }
    )
    try:
        client = TestApp(app)
        app.spool.path = str(blocked / "spool.sqlite3")  # the spool's disk is gone
        client.get(OPEN + "retry-me", status=503)
        app.spool.close()
        app.spool.path = str(spool)  # and back
        client.get(OPEN + "retry-me", status=200)
        assert [row.message_id for row in app.spool.all()] == ["retry-me"]
        client.get(OPEN + "retry-me", status=200)
        assert len(app.spool.all()) == 1
    finally:
        app.close()


def test_a_broken_dedupe_file_delivers_anyway(tmp_path, caplog):
    """A duplicate is better than a lost event."""
    (tmp_path / "gone").mkdir()
    app, events = memory_app(dedupe_window=60, dedupe={"path": str(tmp_path / "gone" / "seen.sqlite3")})
    (tmp_path / "gone").rmdir()  # the folder disappears after start-up
    client = TestApp(app)
    client.get(OPEN + "m")
    client.get(OPEN + "m")
    assert len(events) == 2
    assert "delivering messageId m without deduplication" in caplog.text
    app.close()


def test_racing_threads_deliver_once(deduped):
    client, events, app = deduped
    barrier = threading.Barrier(8)

    def send(_):
        barrier.wait()
        return TestApp(app).get(OPEN + "racing").status_int

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(8)))
    assert statuses == [200] * 8
    assert [event["messageId"] for event in events] == ["racing"]


@pytest.mark.slow
def test_dedupe_holds_across_two_gunicorn_workers(tmp_path):
    store = tmp_path / "events.sqlite3"
    config = write_toml(
        tmp_path / "pixel.toml",
        {
            "spool": {"path": str(tmp_path / "spool.sqlite3")},
            "sources": [{"name": "mail", "write_key": "test-write-key", "dedupe_window": 3600}],
            "destinations": {"store": {"type": "sqlite", "path": str(store)}},
        },
    )
    env = {**environment(), "PIXEL_WSGI_CONFIG": str(config)}
    # --preload: the app is built once in the master and forked, the harder case for
    # anything opened too early.
    with gunicorn(
        "tests.support.worker_pid:create_app()", output=tmp_path / "gunicorn.log", env=env, workers=2, args=["--preload"]
    ) as server:
        # One connection per request: keep sending the same open until two different
        # workers have answered it (each with a 200).
        pids = set()
        for _ in range(400):
            status, headers, body = http_get(server.url + OPEN + "across-workers")
            assert status == 200 and body == TRANSPARENT_GIF
            pids.add(headers["x-worker-pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2, "gunicorn never spread the requests over both workers"

        # And a race: the same new id from many connections at once.
        barrier = threading.Barrier(16)

        def send(_):
            barrier.wait()
            return http_get(server.url + OPEN + "race")

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(send, range(16)))
        assert {status for status, _, _ in answers} == {200}
    ids = [row["event"]["messageId"] for row in read_events(str(store))]
    assert sorted(ids) == ["across-workers", "race"]


def test_a_dedupe_file_locked_by_another_process_delivers_anyway(tmp_path, caplog):
    """A backup or a stuck process holds the write lock: the claim gives up after its
    busy timeout and the event is delivered (and the failure logged), never lost."""
    import subprocess
    import sys

    path = tmp_path / "seen.sqlite3"
    app, events = memory_app(dedupe_window=60, dedupe={"path": str(path)})
    client = TestApp(app)
    client.get(OPEN + "before")  # creates the file
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN IMMEDIATE');"
            " print('locked', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        client.get(OPEN + "while-locked")
        client.get(OPEN + "while-locked")
    finally:
        holder.communicate("", timeout=10)
    assert [event["messageId"] for event in events] == ["before", "while-locked", "while-locked"]
    assert "without deduplication" in caplog.text
    app.close()


def test_a_scanners_fetch_does_not_swallow_the_readers_open(deduped):
    """Machine fetches are deduplicated apart from people's opens."""
    client, events, _ = deduped
    scanner = {"HTTP_USER_AGENT": "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))"}
    reader = {"HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0"}
    for environ in (scanner, scanner, reader, reader):
        client.get(OPEN + "campaign-1-user-1", extra_environ=environ)
    assert [event["context"].get("pixel") for event in events] == [{"fetcher": "bot", "machine": True}, None]


def test_a_failing_observer_costs_no_event(caplog):
    app, events = memory_app()

    class Broken(Observer):
        def machine_open(self, fetcher):
            raise RuntimeError("metrics backend down")

    app.observe(Broken())
    TestApp(app).get(OPEN + "m", extra_environ={"HTTP_USER_AGENT": "curl/8.4.0"})
    assert len(events) == 1
    assert "observer failed on a machine open" in caplog.text and "metrics backend down" in caplog.text


def test_a_removed_file_is_followed_by_every_worker(tmp_path):
    """An operator deletes the file to start afresh: each process (two stores here, as
    two workers) moves to the new file at its next claim, so they agree again."""
    path = tmp_path / "seen.sqlite3"
    first, second = DedupeStore(str(path)), DedupeStore(str(path))
    try:
        assert first.claim("s", "before", 60) is True
        assert second.claim("s", "before", 60) is False
        for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            name.unlink(missing_ok=True)
        assert second.claim("s", "after", 60) is True  # makes the new file
        assert first.claim("s", "after", 60) is False  # and the first worker sees it
        assert first.claim("s", "before", 60) is True  # a fresh start, as asked
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        first.close()
        second.close()
