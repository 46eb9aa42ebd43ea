"""``jsonl`` and ``sqlite`` destinations with several processes (and threads) writing at once.

Pins the promise of the jsonl and sqlite destinations: no event lost, no line torn or interleaved, even for lines
far longer than a pipe buffer (4 KiB) and with every writer racing the others.
"""

from __future__ import annotations

import json

import pytest

from pixel_wsgi.destinations.sqlite import read_events
from tests.support.processes import run_at_once

PROCESSES = 4
THREADS = 2
EVENTS = 150  # per thread

WRITER = """
import sys, threading
from pixel_wsgi.config import build_destination
from pixel_wsgi.destinations import Payload

kind, path, worker, threads, events = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
destination = build_destination("out", {"type": kind, "path": path})
start = threading.Barrier(threads)

def write(thread):
    start.wait()
    for number in range(events):
        message_id = f"{worker}-{thread}-{number}"
        # Sizes from tiny to 3 x 64 KiB, so some writes are larger than any buffer.
        padding = message_id * (1 + (number * 7919) % 10000)
        destination.deliver(Payload({"type": "track", "messageId": message_id, "properties": {"padding": padding}}, "web"))

workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
for t in workers:
    t.start()
for t in workers:
    t.join()
destination.close()
"""


def run_writers(kind: str, path: str) -> None:
    run_at_once(WRITER, [[kind, path, f"p{worker}", str(THREADS), str(EVENTS)] for worker in range(PROCESSES)])


def expected_ids() -> set[str]:
    return {f"p{w}-{t}-{n}" for w in range(PROCESSES) for t in range(THREADS) for n in range(EVENTS)}


def check_event(event: dict) -> str:
    message_id = event["messageId"]
    number = int(message_id.rsplit("-", 1)[1])
    assert event["properties"]["padding"] == message_id * (1 + (number * 7919) % 10000)
    return message_id  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.parametrize("kind", [pytest.param("jsonl", id="jsonl"), pytest.param("sqlite", id="sqlite")])
def test_many_processes_write_every_record_whole(tmp_path, kind):
    path = str(tmp_path / ("events.jsonl" if kind == "jsonl" else "events.sqlite3"))
    run_writers(kind, path)
    if kind == "jsonl":
        with open(path, "rb") as handle:
            data = handle.read()
        assert data.endswith(b"\n")
        events = [json.loads(line) for line in data.split(b"\n")[:-1]]  # a torn line fails here
    else:
        events = [row["event"] for row in read_events(path)]
    ids = [check_event(event) for event in events]
    assert len(ids) == len(set(ids)) == PROCESSES * THREADS * EVENTS
    assert set(ids) == expected_ids()
    # Each writer's own events stay in the order it wrote them.
    for worker in range(PROCESSES):
        for thread in range(THREADS):
            own = [int(i.rsplit("-", 1)[1]) for i in ids if i.startswith(f"p{worker}-{thread}-")]
            assert own == sorted(own)
