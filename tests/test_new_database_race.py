"""Regression: two gunicorn workers spooling their first event at the same instant.

Both opened the new spool file and switched it to WAL mode; the switch needs an
exclusive lock, and SQLite answers "database is locked" at once instead of waiting
in its busy handler, so one worker's event was answered 503 (seen in CI as a 503
among the first two requests of a test with a destination down). Opening now waits
for the other process, up to the busy timeout.
"""

from __future__ import annotations

import subprocess
import sys
import time

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
        import sqlite3

        with sqlite3.connect(path) as connection:
            assert connection.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == PROCESSES
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        connection.close()
