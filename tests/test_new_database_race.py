"""Regression: gunicorn workers spooling their first events at the same instant.

Each worker's threads and its background drainer found the new spool file empty and
set it up at once. SQLite then answered "database is locked" without waiting (the
switch to WAL mode, or incremental vacuum), or "disk I/O error" (one connection
deleting a write-ahead log another had just deleted), and those events were answered
503: seen twice in CI, in tests with a destination down. A new file is now set up by
one process at a time, under a lock on its folder, and opened by the others only once
it has its tables.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pixel_wsgi.destinations.sqlite import INSERT as STORE_INSERT
from pixel_wsgi.destinations.sqlite import SCHEMA as STORE_SCHEMA
from pixel_wsgi.destinations.sqlite import read_events
from pixel_wsgi.group_commit import GroupCommitError, GroupCommitter
from pixel_wsgi.resources import SETUP_LOCK_SUFFIX
from pixel_wsgi.spool import Spool, spool_file_problem
from tests.support.processes import environment

PROCESSES = 8
ROUNDS = 5

OPENER = """
import sys, time
from pixel_wsgi.resources import open_wal_database
from pixel_wsgi.spool import SCHEMA
path, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
connection = open_wal_database(path, SCHEMA)
connection.execute("INSERT INTO spool (destination, message_id, source, event, attempts, last_error, created_at)"
                   " VALUES ('d', 'm', 's', '{}', 1, 'e', 0)")
connection.close()
"""


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path):
    for round_number in range(ROUNDS):
        path = tmp_path / f"spool-{round_number}.sqlite3"
        start = time.time() + 0.5  # every process started and waiting by then
        children = [
            subprocess.Popen([sys.executable, "-c", OPENER, str(path), str(start)], env=environment(), stderr=subprocess.PIPE, text=True)
            for _ in range(PROCESSES)
        ]
        failures = []
        for child in children:
            _, stderr = child.communicate(timeout=60)
            if child.returncode != 0:
                failures.append(stderr.strip().splitlines()[-1])
        assert failures == []
        with sqlite3.connect(path) as connection:
            assert connection.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == PROCESSES
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        connection.close()


# Each process takes the new files one after another, all processes at the same
# instant for each file: four threads spool an event while a fifth shrinks the spool
# as the background drainer does after a drain. Before the fix, 4 runs of this test
# in 5 failed (about one file in a hundred); a pass proves little, a failure is real.
RACING_PROCESSES = 6
FILES = 100
FILE_SLOT = 0.03  # seconds between two files' start instants

SPOOLER = """
import sys, threading, time
from pixel_wsgi.spool import Spool
folder, start, files, slot = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
failures = []

def work(spool, number):
    try:
        if number == 0:
            spool.shrink()
        else:
            spool.add("hook", f"m{number}", "web", b"{}", attempts=1, error="refused")
    except Exception as exc:
        failures.append(f"{spool.path}: {type(exc).__name__}: {exc} {getattr(exc, 'sqlite_errorname', '')}")

for index in range(files):
    spool = Spool(f"{folder}/spool-{index}.sqlite3")
    threads = [threading.Thread(target=work, args=(spool, number)) for number in range(5)]
    time.sleep(max(0.0, start + index * slot - time.time()))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spool.close()
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def test_threads_and_drainers_of_several_processes_spooling_into_new_files_at_once(tmp_path):
    start = time.time() + 1.0  # every process started and waiting by then
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SPOOLER, str(tmp_path), str(start), str(FILES), str(FILE_SLOT)],
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(RACING_PROCESSES)
    ]
    outputs = [child.communicate(timeout=120)[0] for child in children]
    assert [child.returncode for child in children] == [0] * RACING_PROCESSES, "\n".join(outputs)
    for index in range(FILES):
        path = tmp_path / f"spool-{index}.sqlite3"
        with sqlite3.connect(path) as connection:
            assert connection.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 4 * RACING_PROCESSES
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert connection.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        connection.close()
        assert path.stat().st_mode & 0o777 == 0o600


def test_an_empty_file_made_beforehand_is_set_up_on_first_use(tmp_path):
    # An operator may create the file to choose its owner; its mode is theirs to keep.
    path = tmp_path / "spool.sqlite3"
    path.touch(mode=0o640)
    path.chmod(0o640)
    assert spool_file_problem(str(path)) is None
    spool = Spool(str(path))
    spool.add("hook", "m1", "web", b"{}", attempts=1, error="refused")
    assert [event.message_id for event in spool.all()] == ["m1"]
    spool.close()
    assert path.stat().st_mode & 0o777 == 0o640
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


class SetUpLockHeld:
    """Another process holding a new database's set-up lock (a stuck or stopped worker)."""

    def __init__(self, database: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, f"{database}{SETUP_LOCK_SUFFIX}"], stdout=subprocess.PIPE, text=True)

    def __enter__(self) -> SetUpLockHeld:
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "held"
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.communicate()


def test_spooling_into_a_file_whose_set_up_is_held_waits_the_request_s_time_only(tmp_path):
    # It used to wait 5 s, whatever the request had left, and say "database is locked".
    path = tmp_path / "spool.sqlite3"
    spool = Spool(str(path))
    with SetUpLockHeld(path):
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="setup-lock was held by another process"):
            spool.add("hook", "m1", "web", b"{}", attempts=1, error="refused", wait=0.3)
        assert time.monotonic() - started < 2.0
    spool.add("hook", "m1", "web", b"{}", attempts=1, error="refused", wait=0.3)  # lock gone: set up now
    assert [event.message_id for event in spool.all()] == ["m1"]
    spool.close()


def test_a_store_commit_whose_set_up_is_held_fails_within_its_time_and_is_not_retried_as_busy(tmp_path):
    path = tmp_path / "events.sqlite3"
    writer = GroupCommitter(str(path), STORE_SCHEMA, STORE_INSERT)
    try:
        with SetUpLockHeld(path):
            started = time.monotonic()
            with pytest.raises(GroupCommitError, match="setup-lock was held by another process for 0.3"):
                writer.insert(("2026-11-23T00:00:00.000Z", "track", "m1", "web", "{}"), 0.3)
            assert time.monotonic() - started < 2.0
        writer.insert(("2026-11-23T00:00:00.000Z", "track", "m2", "web", "{}"), 0.3)
    finally:
        writer.close()
    assert [event["message_id"] for event in read_events(str(path))] == ["m2"]
