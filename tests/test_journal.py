"""The SQLite store's journal: events answered before their commit are never lost or stored twice.

Real processes killed with SIGKILL, a real write lock held by another process, real
journal files: the journal's promise is what happens when things go wrong.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import orjson
import pytest

from pixel_wsgi import journal
from pixel_wsgi.config import build_destination
from pixel_wsgi.destinations import Payload
from pixel_wsgi.destinations.sqlite import read_events, recover_journals
from pixel_wsgi.journal import HEADER, journal_folder, read_records
from tests.support.delivery import delivery_config, spooled_message_ids, track_url
from tests.support.processes import environment, run_cli, write_toml
from tests.support.servers import gunicorn, http_get
from tests.test_group_commit import WriteLock

# Delivers argv[2] events, flushes after argv[3] of them (0: never), then kills itself:
# no atexit, no close, as the kernel's OOM killer or an operator's kill -9 would.
KILLED_WRITER = """
import os, signal, sys
from pixel_wsgi import journal
from pixel_wsgi.config import build_destination
from pixel_wsgi.destinations import Payload

path, count, flush_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
destination = build_destination("store", {"type": "sqlite", "path": path})
for number in range(count):
    destination.deliver(Payload({"type": "track", "messageId": f"m-{number}", "receivedAt": "now"}, "web"))
    if number + 1 == flush_after:
        assert destination.flush()
print("delivered", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def run_killed_writer(store: Path, count: int, flush_after: int = 0) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(store), str(count), str(flush_after)],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == -signal.SIGKILL, completed.stderr
    assert completed.stdout.strip() == "delivered"


def message_ids(store: Path) -> list[str]:
    return [row["message_id"] for row in read_events(str(store))] if store.exists() else []


def committed_so_far(store: Path) -> list[str]:
    """``message_ids``, while the store may still be being set up by another thread."""
    try:
        return message_ids(store)
    except sqlite3.OperationalError as exc:
        assert "no such table" in str(exc)
        return []


def journal_files(store: Path) -> list[Path]:
    folder = Path(journal_folder(str(store)))
    return sorted(folder.iterdir()) if folder.exists() else []


def test_events_of_a_killed_process_are_committed_by_the_next_one(tmp_path: Path) -> None:
    store = tmp_path / "events.sqlite3"
    # Many events, so that most are still in the journal when the process dies.
    run_killed_writer(store, 2000)
    assert len(journal_files(store)) == 1
    assert recover_journals(str(store)) + len(message_ids(store)) >= 2000
    ids = message_ids(store)
    assert len(ids) == len(set(ids)) == 2000
    assert journal_files(store) == []


def test_what_was_committed_before_the_kill_is_not_committed_twice(tmp_path: Path) -> None:
    """The journal's progress is committed with its rows: recovery starts after them."""
    store = tmp_path / "events.sqlite3"
    run_killed_writer(store, 150, flush_after=100)
    assert len(message_ids(store)) >= 100
    recover_journals(str(store))
    ids = message_ids(store)
    assert sorted(ids) == sorted(f"m-{number}" for number in range(150))


def test_pixel_wsgi_events_shows_what_a_killed_server_answered(tmp_path: Path) -> None:
    store = tmp_path / "events.sqlite3"
    run_killed_writer(store, 40)
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "pixel-wsgi"), "events", "--db", str(store), "--json", "--last", "100"],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert len(completed.stdout.splitlines()) == 40


def test_a_live_process_keeps_its_journal(tmp_path: Path) -> None:
    """Recovery takes only journals whose process has ended: a living one's ``flock`` is held."""
    store = tmp_path / "events.sqlite3"
    destination = build_destination("store", {"type": "sqlite", "path": str(store)})
    lock = WriteLock_after_setup(destination, store)
    try:
        destination.deliver(Payload({"type": "track", "messageId": "m-live", "receivedAt": "now"}, "web"))
        assert recover_journals(str(store)) == 0
        assert len(journal_files(store)) == 1
    finally:
        lock.release()
        destination.close()
    assert message_ids(store) == ["m-setup", "m-live"]
    assert journal_files(store) == []  # a clean close leaves nothing behind


def WriteLock_after_setup(destination, store: Path) -> WriteLock:  # noqa: N802 - reads as the lock it returns
    """The store set up with one event, then its write lock held by another connection."""
    destination.deliver(Payload({"type": "track", "messageId": "m-setup", "receivedAt": "now"}, "web"))
    assert destination.flush()
    return WriteLock(store)


def test_a_locked_store_costs_the_request_nothing_and_gets_the_event_afterwards(tmp_path: Path) -> None:
    """Another process holds the store's write lock: the event waits in the journal (not
    in the spool), the answer is immediate, and the event is committed once the lock goes."""
    store = tmp_path / "events.sqlite3"
    destination = build_destination("store", {"type": "sqlite", "path": str(store)})
    lock = WriteLock_after_setup(destination, store)
    try:
        started = time.monotonic()
        for number in range(50):
            destination.deliver_within(Payload({"type": "track", "messageId": f"m-{number}", "receivedAt": "now"}, "web"), 0.5)
        assert time.monotonic() - started < 0.5  # 50 events, not 50 lock waits
        time.sleep(0.3)
        assert message_ids(store) == ["m-setup"]
    finally:
        lock.release()
    try:
        deadline = time.monotonic() + 10
        while len(message_ids(store)) < 51 and time.monotonic() < deadline:
            time.sleep(0.05)  # the journal's thread tries again by itself
        assert message_ids(store) == ["m-setup", *(f"m-{number}" for number in range(50))]
    finally:
        destination.close()


def test_events_waiting_past_the_memory_bound_are_read_back_from_the_file(tmp_path: Path, monkeypatch) -> None:
    """While the store is locked, only the first events waiting are also kept in memory;
    the others are read back from the journal file when the lock goes, in order."""
    monkeypatch.setattr(journal, "MAX_ROWS_IN_MEMORY", 10)
    store = tmp_path / "events.sqlite3"
    destination = build_destination("store", {"type": "sqlite", "path": str(store)})
    lock = WriteLock_after_setup(destination, store)
    try:
        for number in range(50):
            destination.deliver_within(Payload({"type": "track", "messageId": f"m-{number}", "receivedAt": "now"}, "web"), 0.5)
        state = destination._journal._state
        with state.importing:  # no commit under way: every event is in the list
            assert [row is None for _segment, _start, _end, row in state.waiting] == [False] * 10 + [True] * 40
    finally:
        lock.release()
    try:
        assert destination.flush()
        assert message_ids(store) == ["m-setup", *(f"m-{number}" for number in range(50))]
        assert read_events(str(store))[-1]["event"]["messageId"] == "m-49"
    finally:
        destination.close()


def test_a_torn_record_ends_the_journal_and_the_events_before_it_are_kept(tmp_path: Path) -> None:
    store = tmp_path / "events.sqlite3"
    run_killed_writer(store, 3)
    [journal] = journal_files(store)
    records = read_records(str(journal))
    assert len(records) == 3
    # A fourth record cut off by the process's end: a length and checksum, half its bytes.
    with open(journal, "r+b") as file:
        file.seek(records[-1][0])
        file.write(HEADER.pack(100, 12345) + b'["half')
    assert len(read_records(str(journal))) == 3
    recover_journals(str(store))
    assert sorted(message_ids(store)) == ["m-0", "m-1", "m-2"]


def test_journal_files_are_private_and_their_space_is_reserved(tmp_path: Path) -> None:
    store = tmp_path / "events.sqlite3"
    previous = os.umask(0o022)
    destination = build_destination("store", {"type": "sqlite", "path": str(store)})
    try:
        destination.deliver(Payload({"type": "track", "messageId": "m-1", "receivedAt": "now"}, "web"))
        [journal] = journal_files(store)
        assert oct(journal.stat().st_mode & 0o777) == "0o600"
        assert oct(journal.parent.stat().st_mode & 0o777) == "0o700"
        # posix_fallocate: blocks on disk, so a full disk fails the creation, not a write.
        assert journal.stat().st_blocks * 512 >= journal.stat().st_size > 0
    finally:
        destination.close()
        os.umask(previous)


def test_without_the_journal_every_event_is_committed_before_the_answer(tmp_path: Path) -> None:
    store = tmp_path / "events.sqlite3"
    destination = build_destination("store", {"type": "sqlite", "path": str(store), "journal": False})
    try:
        destination.deliver(Payload({"type": "track", "messageId": "m-direct", "receivedAt": "now"}, "web"))
        assert message_ids(store) == ["m-direct"]
        assert journal_files(store) == []
    finally:
        destination.close()


@pytest.mark.slow
def test_gunicorn_workers_killed_under_load_lose_no_answered_event(tmp_path: Path) -> None:
    """The operator's worst case for a write-behind store: gunicorn workers killed with
    SIGKILL (the OOM killer, a timeout) while eight clients keep sending. Every event
    answered 200 ends up in the store exactly once, or in the spool: the journals of the
    killed workers are committed by the workers that live on, or at the latest by
    ``pixel-wsgi events``."""
    store = tmp_path / "events.sqlite3"
    config = delivery_config(tmp_path, {"store": {"type": "sqlite", "path": str(store)}})
    env = {**environment(), "PIXEL_WSGI_CONFIG": str(write_toml(tmp_path / "pixel.toml", config))}
    answered: list[str] = []
    failed: list[str] = []
    stop = threading.Event()
    killed: list[int] = []
    with gunicorn("pixel_wsgi:create_app()", output=tmp_path / "gunicorn.log", env=env, workers=2, threads=4) as server:

        def client(number: int) -> None:
            sent = 0
            while not stop.is_set():
                message_id = f"m-{number}-{sent}"
                sent += 1
                try:
                    status = http_get(server.url + track_url(message_id), timeout=30)[0]
                except (OSError, http.client.HTTPException):
                    continue  # cut by a kill: never answered, so never promised
                (answered if status == 200 else failed).append(message_id)

        clients = [threading.Thread(target=client, args=(number,)) for number in range(8)]
        for thread in clients:
            thread.start()
        try:
            for _ in range(4):
                time.sleep(1.0)
                workers = [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", server.log())]
                victim = next(pid for pid in reversed(workers) if pid not in killed)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            time.sleep(1.0)
        finally:
            stop.set()
            for thread in clients:
                thread.join()
        server.stop()
        log = server.log()
    # Journals left by the killed workers that the live ones had not reached yet.
    left = run_cli("events", "--db", str(store), "--last", "1")
    assert left.returncode == 0, left.stderr
    stored = message_ids(store)
    spooled = spooled_message_ids(tmp_path / "spool.sqlite3")
    assert failed == []
    assert len(answered) > 1000
    assert set(answered) <= set(stored) | spooled
    assert len(stored) == len(set(stored)), "an event stored twice"
    assert journal_files(store) == []
    recovered = sum(int(count) for count in re.findall(r"(\d+) events committed from the journal of an ended process", log + left.stderr))
    print(f"\n{len(answered)} answered, {len(killed)} workers killed, {recovered} events committed from their journals")
    assert recovered > 0  # the kills did catch events in the journals


# Delivers argv[2] events while the store is locked (nothing is committed), says so, then
# waits to be killed.
WAITING_WRITER = """
import sys, time
from pixel_wsgi.config import build_destination
from pixel_wsgi.destinations import Payload

path, count = sys.argv[1], int(sys.argv[2])
destination = build_destination("store", {"type": "sqlite", "path": path})
for number in range(count):
    destination.deliver_within(Payload({"type": "track", "messageId": f"m-{number}", "receivedAt": "now"}, "web"), 0.5)
print("delivered", flush=True)
time.sleep(60)
"""


def test_a_journal_deleted_by_hand_is_made_again_before_its_process_dies(tmp_path: Path) -> None:
    """Found by a fresh-eyes attack: the journals folder removed (an operator cleaning up)
    while events waited for a locked store, then the worker killed: every answered event
    was lost with the unlinked file. The process now writes a deleted file again."""
    store = tmp_path / "events.sqlite3"
    setup = build_destination("store", {"type": "sqlite", "path": str(store), "journal": False})
    setup.deliver(Payload({"type": "track", "messageId": "m-setup", "receivedAt": "now"}, "web"))
    setup.close()
    lock = WriteLock(store)
    writer = subprocess.Popen(
        [sys.executable, "-c", WAITING_WRITER, str(store), "300"],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "delivered"
        folder = Path(journal_folder(str(store)))
        shutil.rmtree(folder)
        deadline = time.monotonic() + 10
        while not journal_files(store):
            assert time.monotonic() < deadline, "the deleted journal was not made again"
            time.sleep(0.05)
        time.sleep(0.2)  # (made under a temporary name, then renamed: let it finish)
        writer.kill()
        _, errors = writer.communicate(timeout=10)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        lock.release()
    assert "was deleted while in use; made again" in errors
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert recover_journals(str(store)) == 300
    assert message_ids(store) == ["m-setup", *(f"m-{number}" for number in range(300))]


def test_a_journal_that_cannot_be_read_does_not_stop_the_commits(tmp_path: Path) -> None:
    """Found by a fresh-eyes attack: one failure in the journal's thread (there, a file it
    could not delete) ended the thread for good, and events waited until a clean exit.
    Here a folder named like a journal of an ended process fails the thread's first scan."""
    store = tmp_path / "events.sqlite3"
    (Path(journal_folder(str(store))) / "12345-abcdef.journal").mkdir(parents=True)
    destination = build_destination("store", {"type": "sqlite", "path": str(store)})
    try:
        for number in range(3):
            destination.deliver(Payload({"type": "track", "messageId": f"m-{number}", "receivedAt": "now"}, "web"))
            deadline = time.monotonic() + 5
            while len(committed_so_far(store)) <= number:  # committed by the thread: no flush
                assert time.monotonic() < deadline, f"m-{number} not committed"
                time.sleep(0.02)
    finally:
        destination.close()
    assert message_ids(store) == ["m-0", "m-1", "m-2"]


def test_a_file_being_created_is_not_taken_for_a_dead_processs(tmp_path: Path) -> None:
    """Found by a fresh-eyes attack: a scan could delete another process's journal between
    its creation and its lock (1 creation in 100 under --max-requests recycling), and
    that event went the slow way with an alarming warning. Only old ones go now."""
    store = tmp_path / "events.sqlite3"
    folder = Path(journal_folder(str(store)))
    folder.mkdir()
    fresh = folder / ".1-aaaaaa.journal.new"
    stale = folder / ".2-bbbbbb.journal.new"
    fresh.touch()
    stale.touch()
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    recover_journals(str(store))
    assert sorted(path.name for path in folder.iterdir()) == [fresh.name]


def test_pixel_wsgi_events_recovers_a_journal_whose_store_was_deleted(tmp_path: Path) -> None:
    """Found by a fresh-eyes attack: with the store gone, ``pixel-wsgi events`` said "no
    such event store" and left the journal of the killed server where it was."""
    store = tmp_path / "events.sqlite3"
    run_killed_writer(store, 100)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    assert journal_files(store)
    completed = run_cli("events", "--db", str(store), "--last", "0", "--json")
    assert completed.returncode == 0, completed.stderr
    shown = [json.loads(line)["messageId"] for line in completed.stdout.splitlines()]
    assert shown == [f"m-{number}" for number in range(100)]  # its progress went with the store: all again
    assert journal_files(store) == []


# Starts a write transaction on the store in rollback-journal mode, big enough to spill
# pages into the file, and is killed in the middle: the hot journal that a writer killed
# while setting up a new store leaves.
HOT_JOURNAL_WRITER = """
import os, signal, sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA cache_size = 1")
connection.execute("CREATE TABLE filler (a)")
connection.execute("BEGIN")
for _ in range(200):
    connection.execute("INSERT INTO filler VALUES (randomblob(4000))")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_store_left_half_written_is_repaired_before_its_journals_are_recovered(tmp_path: Path) -> None:
    """Found by CI: a server killed while it set up a new store left a hot rollback
    journal beside it, which a read-only connection may not roll back ("attempt to write
    a readonly database"): the event it had answered stayed in its journal, and
    ``pixel-wsgi events`` failed. The store's own writer now repairs the file first."""
    store = tmp_path / "events.sqlite3"
    subprocess.run([sys.executable, "-c", HOT_JOURNAL_WRITER, str(store)], env=environment(), timeout=60)
    assert Path(f"{store}-journal").stat().st_size > 0
    folder = Path(journal_folder(str(store)))
    folder.mkdir()
    record = orjson.dumps(["now", "track", "m-answered", "web", '{"type":"track","messageId":"m-answered"}'])
    (folder / "4242-abcdef123456.journal").write_bytes(HEADER.pack(len(record), zlib.crc32(record)) + record)
    completed = run_cli("events", "--db", str(store), "--last", "0", "--json")
    assert completed.returncode == 0, completed.stderr
    assert [json.loads(line)["messageId"] for line in completed.stdout.splitlines()] == ["m-answered"]
    assert journal_files(store) == []
