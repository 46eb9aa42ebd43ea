"""Group commit of the SQLite store: a success means the row is committed, failures stay with their rows.

Everything here is a real SQLite file; a second connection (or process) holding the
write lock is how a commit is made to wait or to fail.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from pixel_wsgi import PixelApp
from pixel_wsgi.config import build_destination
from pixel_wsgi.destinations import DeliveryError, Payload
from pixel_wsgi.destinations.sqlite import INSERT, SCHEMA, read_events
from pixel_wsgi.group_commit import CHECKPOINT_EVERY, FILE_CHECK_INTERVAL, GroupCommitError, GroupCommitter, GroupCommitTimeout
from pixel_wsgi.resources import open_wal_database
from tests.support.processes import environment, run_at_once


def row(message_id: str, event: str = "{}") -> tuple[str, str, str, str, str]:
    return ("2024-01-01T00:00:00.000Z", "track", message_id, "web", event)


def stored_ids(path: Path) -> list[str]:
    """The message ids in the file, read through a connection of its own."""
    connection = sqlite3.connect(path)
    try:
        return [message_id for (message_id,) in connection.execute("SELECT message_id FROM events ORDER BY id")]
    finally:
        connection.close()


def is_stored(path: Path, message_id: str) -> bool:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT 1 FROM events WHERE message_id = ?", (message_id,)).fetchone() is not None
    finally:
        connection.close()


class WriteLock:
    """Another connection holding the database's write lock until ``release()``."""

    def __init__(self, path: Path) -> None:
        self.connection = open_wal_database(str(path), SCHEMA)
        self.connection.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self.connection.in_transaction:
            self.connection.execute("ROLLBACK")
        self.connection.close()


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "events.sqlite3"
    open_wal_database(str(path), SCHEMA).close()
    yield path


@pytest.fixture
def committer(database: Path) -> Iterator[GroupCommitter]:
    writer = GroupCommitter(str(database), SCHEMA, INSERT)
    yield writer
    writer.close()


def insert_in_threads(writer: GroupCommitter, message_ids: list[str], timeout: float = 10.0) -> dict[str, BaseException | None]:
    """Insert each row from its own thread, all at once; the outcome per message id."""
    outcomes: dict[str, BaseException | None] = {}
    start = threading.Barrier(len(message_ids))

    def one(message_id: str) -> None:
        start.wait()
        try:
            writer.insert(row(message_id), timeout)
            outcomes[message_id] = None
        except BaseException as exc:  # recorded, asserted by the test
            outcomes[message_id] = exc

    threads = [threading.Thread(target=one, args=(message_id,)) for message_id in message_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def wait_until(condition: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_nothing_is_opened_before_the_first_row(tmp_path: Path) -> None:
    """Pins the gunicorn --preload rule: no file, no thread until a row arrives."""
    writer = GroupCommitter(str(tmp_path / "events.sqlite3"), SCHEMA, INSERT)
    assert list(tmp_path.iterdir()) == []
    threads_before = threading.active_count()
    writer.insert(row("m-1"))
    assert stored_ids(tmp_path / "events.sqlite3") == ["m-1"]
    # The row was committed on the caller's thread: no thread was started for it.
    assert threading.active_count() == threads_before
    writer.close()


def test_many_threads_each_success_is_a_committed_row(committer: GroupCommitter, database: Path) -> None:
    """Every insert that returned is visible to another connection right away."""
    threads, per_thread = 8, 60
    missing: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def write(thread: int) -> None:
        start.wait()
        for number in range(per_thread):
            message_id = f"t{thread}-{number}"
            try:
                committer.insert(row(message_id), 10.0)
            except BaseException as exc:
                errors.append(exc)
                return
            if not is_stored(database, message_id):
                missing.append(message_id)

    workers = [threading.Thread(target=write, args=(thread,)) for thread in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors == []
    assert missing == []
    assert sorted(stored_ids(database)) == sorted(f"t{t}-{n}" for t in range(threads) for n in range(per_thread))


def test_rows_queued_during_a_commit_go_together_into_the_next(committer: GroupCommitter, database: Path) -> None:
    """While one commit waits for the write lock, the others queue; all of them are stored."""
    lock = WriteLock(database)
    outcomes: dict[str, BaseException | None] = {}
    runner = threading.Thread(target=lambda: outcomes.update(insert_in_threads(committer, [f"m-{n}" for n in range(6)])))
    runner.start()
    # One thread commits its own row and waits for the lock; the others had to queue.
    wait_until(lambda: committer.queued == 5)
    lock.release()
    runner.join(30)
    assert outcomes == {f"m-{n}": None for n in range(6)}
    assert sorted(stored_ids(database)) == [f"m-{n}" for n in range(6)]


def test_a_failed_commit_fails_exactly_its_waiting_requests(database: Path) -> None:
    """A database locked past the waiting time: those requests fail; the next ones succeed."""
    writer = GroupCommitter(str(database), SCHEMA, INSERT)
    try:
        lock = WriteLock(database)
        failed = insert_in_threads(writer, [f"lost-{n}" for n in range(5)], timeout=0.3)
        lock.release()
        assert set(failed) == {f"lost-{n}" for n in range(5)}
        for error in failed.values():
            assert isinstance(error, GroupCommitError), error
        stored = insert_in_threads(writer, [f"kept-{n}" for n in range(5)])
        assert stored == {f"kept-{n}": None for n in range(5)}
        assert sorted(stored_ids(database)) == [f"kept-{n}" for n in range(5)]
    finally:
        writer.close()


def test_a_row_that_breaks_a_constraint_fails_alone(committer: GroupCommitter, database: Path) -> None:
    """One bad row in a batch: the batch is retried row by row, so only its request fails."""
    lock = WriteLock(database)
    outcomes: dict[str, BaseException | None] = {}
    start = threading.Barrier(6)

    def one(message_id: str) -> None:
        start.wait()
        # ``event`` is NOT NULL: this row cannot be stored.
        values = row(message_id, None) if message_id == "bad" else row(message_id)  # type: ignore[arg-type]
        try:
            committer.insert(values, 10.0)
            outcomes[message_id] = None
        except GroupCommitError as exc:
            outcomes[message_id] = exc

    names = ["bad", "a", "b", "c", "d", "e"]
    threads = [threading.Thread(target=one, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    wait_until(lambda: committer.queued == 5)
    lock.release()
    for thread in threads:
        thread.join(30)
    assert isinstance(outcomes.pop("bad"), GroupCommitError)
    assert outcomes == {name: None for name in names[1:]}
    assert sorted(stored_ids(database)) == sorted(names[1:])


def test_a_commit_waits_for_another_writer_itself_and_gets_through(committer: GroupCommitter, database: Path) -> None:
    """The store's connection has no busy timeout (SQLite's handler sleeps 1, 2, 5 ms and
    more per collision): a commit refused by another connection's write lock is tried
    again by the committer and goes through once that lock is released."""
    committer.insert(row("m-open"), 5.0)
    assert committer._connection is not None
    assert committer._connection.execute("PRAGMA busy_timeout").fetchone() == (0,)
    lock = WriteLock(database)
    released_at: list[float] = []

    def release() -> None:
        released_at.append(time.monotonic())
        lock.release()

    releaser = threading.Timer(0.3, release)
    releaser.start()
    try:
        committer.insert(row("m-after-the-lock"), 5.0)
        committed_at = time.monotonic()
    finally:
        releaser.join(10)
    # Committed, and only after the other connection let go.
    assert released_at and released_at[0] <= committed_at
    assert stored_ids(database) == ["m-open", "m-after-the-lock"]


def test_a_request_waits_no_longer_than_its_timeout(committer: GroupCommitter, database: Path) -> None:
    lock = WriteLock(database)
    try:
        started = time.monotonic()
        with pytest.raises(GroupCommitError):
            committer.insert(row("m-1"), 0.2)
        assert time.monotonic() - started < 2.0
        # Queued behind a commit that waits for the lock: a timeout of its own.
        holder = threading.Thread(target=lambda: pytest.raises(GroupCommitError, committer.insert, row("m-2"), 1.0))
        holder.start()
        time.sleep(0.1)
        with pytest.raises(GroupCommitTimeout):
            committer.insert(row("m-3"), 0.2)
        holder.join(10)
    finally:
        lock.release()
    committer.insert(row("m-4"), 5.0)
    assert "m-4" in stored_ids(database)


def test_close_commits_what_is_queued(database: Path) -> None:
    writer = GroupCommitter(str(database), SCHEMA, INSERT)
    lock = WriteLock(database)
    outcomes: dict[str, BaseException | None] = {}
    runner = threading.Thread(target=lambda: outcomes.update(insert_in_threads(writer, [f"m-{n}" for n in range(5)])))
    runner.start()
    wait_until(lambda: writer.queued == 4)
    closer = threading.Thread(target=writer.close)
    closer.start()
    time.sleep(0.1)
    lock.release()
    closer.join(30)
    runner.join(30)
    assert outcomes == {f"m-{n}": None for n in range(5)}
    assert sorted(stored_ids(database)) == [f"m-{n}" for n in range(5)]
    assert writer._connection is None
    # Closed is not broken: the next row starts over.
    writer.insert(row("m-after"))
    writer.close()
    assert "m-after" in stored_ids(database)


def test_a_thread_per_request_server_keeps_one_connection(database: Path) -> None:
    """A thread per request (wsgiref, ``pixel-wsgi serve``): connections do not pile up."""
    writer = GroupCommitter(str(database), SCHEMA, INSERT)
    opened: list[sqlite3.Connection] = []

    def counting_connect(path: str, schema: str) -> sqlite3.Connection:
        connection = open_wal_database(path, schema)
        opened.append(connection)
        return connection

    writer._connect = counting_connect
    for number in range(50):
        thread = threading.Thread(target=writer.insert, args=(row(f"m-{number}"),))
        thread.start()
        thread.join()
    writer.close()
    assert len(opened) == 1
    assert len(stored_ids(database)) == 50


def test_checkpoints_run_beside_the_commits(database: Path) -> None:
    """The WAL is copied into the database by the checkpointer thread, not inside a request's commit."""
    writer = GroupCommitter(str(database), SCHEMA, INSERT)
    try:
        size_before = database.stat().st_size
        for number in range(3 * CHECKPOINT_EVERY):
            writer.insert(row(f"m-{number}", "x" * 2000))
        assert writer._connection is not None
        assert writer._connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        # Rows reach the database file only through a checkpoint.
        wait_until(lambda: database.stat().st_size > size_before + 100 * 4096)
        assert len(stored_ids(database)) == 3 * CHECKPOINT_EVERY
    finally:
        writer.close()
    assert writer._checkpointer is None


@pytest.mark.parametrize("how", ["renamed", "deleted"])
def test_a_store_moved_away_gets_a_new_file(tmp_path: Path, how: str) -> None:
    """An operator archives the store (rename or delete): new rows go to a new file at the same path."""
    path = tmp_path / "events.sqlite3"
    writer = GroupCommitter(str(path), SCHEMA, INSERT)
    try:
        writer.insert(row("before"))
        if how == "renamed":
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{path}{suffix}").exists():
                    Path(f"{path}{suffix}").rename(tmp_path / f"archived.sqlite3{suffix}")
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        time.sleep(FILE_CHECK_INTERVAL + 0.1)
        writer.insert(row("after"))
        assert stored_ids(path) == ["after"]
        if how == "renamed":
            assert stored_ids(tmp_path / "archived.sqlite3") == ["before"]
    finally:
        writer.close()


def test_a_checkpoint_after_the_store_was_deleted_does_not_create_it_again(tmp_path: Path) -> None:
    """The checkpointer opens the file at ``path`` each time; a store deleted meanwhile
    must be set up by the next commit (private, WAL mode), not left as an empty file."""
    path = tmp_path / "events.sqlite3"
    writer = GroupCommitter(str(path), SCHEMA, INSERT)
    try:
        writer.insert(row("before"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        writer._start_checkpointer().set()
        time.sleep(0.5)
        assert not path.exists()
    finally:
        writer.close()


WRITER = """
import sys, sqlite3, threading
from pixel_wsgi.destinations import Payload
from pixel_wsgi.config import build_destination

path, worker, journal = sys.argv[1], sys.argv[2], sys.argv[3] == "journal"
destination = build_destination("store", {"type": "sqlite", "path": path, "journal": journal})
start = threading.Barrier(4)
problems = []

def write(thread):
    reader = sqlite3.connect(path)
    start.wait()
    for number in range(150):
        message_id = f"{worker}-{thread}-{number}"
        destination.deliver(Payload({"type": "track", "messageId": message_id, "receivedAt": "now"}, "web"))
        if not journal and reader.execute("SELECT 1 FROM events WHERE message_id = ?", (message_id,)).fetchone() is None:
            problems.append(message_id)
    reader.close()

threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
destination.close()
if problems:
    sys.exit(f"delivered but not readable: {problems[:5]}")
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["direct", "journal"])
def test_two_processes_of_four_threads(tmp_path: Path, mode: str) -> None:
    """Two worker processes at once: none lost, none twice; without the journal every
    delivered event is readable right after; with it, once the processes have closed
    the store, and no journal file is left."""
    path = str(tmp_path / "events.sqlite3")
    run_at_once(WRITER, [[path, f"p{worker}", mode] for worker in range(2)], timeout=120)
    ids = [event["message_id"] for event in read_events(path)]
    assert len(ids) == len(set(ids)) == 2 * 4 * 150
    assert not list((tmp_path / "events.sqlite3.journals").glob("*"))


def test_the_destination_reports_a_locked_store_as_a_delivery_error(database: Path) -> None:
    destination = build_destination("store", {"type": "sqlite", "path": str(database), "journal": False})
    lock = WriteLock(database)
    try:
        with pytest.raises(DeliveryError, match="sqlite"):
            destination.deliver_within(Payload({"type": "track", "messageId": "m-1"}, "web"), 0.2)
    finally:
        lock.release()
        destination.close()


def test_a_locked_store_costs_the_request_its_budget_not_more(tmp_path: Path) -> None:
    """Another process holds the store: within the budget the event goes to the spool, answered 200."""
    database = tmp_path / "events.sqlite3"
    open_wal_database(str(database), SCHEMA).close()
    app = PixelApp(
        {
            "sources": [{"name": "web", "write_key": "k"}],
            "destinations": {"store": {"type": "sqlite", "path": str(database), "journal": False}},
            "spool": {"path": str(tmp_path / "spool.sqlite3")},
            "dispatch": {"budget": 0.5},
        }
    )
    lock = WriteLock(database)
    statuses: list[str] = []
    try:
        started = time.monotonic()
        body = app(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/pixel/v1/track", "QUERY_STRING": "writeKey=k&event=Signed+Up&anonymousId=a"},
            lambda status, headers, exc_info=None: statuses.append(status),
        )
        b"".join(body)
        elapsed = time.monotonic() - started
    finally:
        lock.release()
    try:
        assert statuses == ["200 OK"]
        assert elapsed < 0.5 + 0.25
        assert [event.destination for event in app.spool.all()] == ["store"]
        assert stored_ids(database) == []
    finally:
        app.close()


@pytest.mark.slow
@pytest.mark.parametrize("journal", [False, True], ids=["direct", "journal"])
def test_under_gunicorn_each_200_is_a_row_readable_right_away(tmp_path: Path, journal: bool) -> None:
    """gunicorn gthread, 2 workers x 4 threads, app built before the fork: 8 clients at once,
    and after every 200 the event is read back from the store by another connection: at
    once without the journal, within JOURNAL_VISIBLE seconds with it."""
    from tests.support.processes import write_toml
    from tests.support.servers import gunicorn, http_get

    database = tmp_path / "events.sqlite3"
    config = write_toml(
        tmp_path / "pixel.toml",
        {
            "sources": [{"name": "web", "write_key": "k"}],
            "destinations": {"store": {"type": "sqlite", "path": str(database), "journal": journal}},
            "spool": {"path": str(tmp_path / "spool.sqlite3")},
        },
    )
    env = {**environment(), "PIXEL_WSGI_CONFIG": str(config)}
    problems: list[str] = []
    patience = JOURNAL_VISIBLE if journal else 0.0
    with gunicorn(
        "pixel_wsgi:create_app()",
        output=tmp_path / "gunicorn.log",
        env=env,
        workers=2,
        threads=4,
        args=["--worker-class", "gthread", "--preload"],
    ) as server:

        def client(number: int) -> None:
            for request in range(40):
                message_id = f"c{number}-{request}"
                status, _, _ = http_get(f"{server.url}/pixel/v1/track?writeKey=k&event=Opened&anonymousId=a&messageId={message_id}")
                if status != 200:
                    problems.append(f"{message_id}: {status}")
                elif not stored_within(database, message_id, patience):
                    problems.append(f"{message_id}: answered 200 but not in the store")

        clients = [threading.Thread(target=client, args=(number,)) for number in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(120)
    assert problems == []
    assert len(stored_ids(database)) == 8 * 40


# How soon a journaled event must be readable in the store (it takes milliseconds; the
# margin is for a loaded test machine).
JOURNAL_VISIBLE = 1.0


def stored_within(database: Path, message_id: str, seconds: float) -> bool:
    """Whether the event is in the store now or within ``seconds`` (read-only: a store
    the journal has not created yet is not created here)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if database.exists() and database.stat().st_size and is_stored(database, message_id):
                return True
        except sqlite3.OperationalError as exc:  # a store being set up this very moment
            if "no such table" not in str(exc):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


APPENDER = """
import sys
from pixel_wsgi.destinations.sqlite import INSERT, SCHEMA
from pixel_wsgi.group_commit import GroupCommitter
store = GroupCommitter(sys.argv[1], SCHEMA, INSERT)
row = ("2026-01-01T00:00:00.000Z", "page", "m", "s", "x" * 600)
for _ in range(int(sys.argv[2])):
    store.insert(row, 5.0)
store.close()
"""


def test_two_processes_writing_all_the_time_keep_the_wal_small(tmp_path):
    """Regression: with two processes always appending, the PASSIVE checkpoints never
    caught up, so SQLite never restarted the WAL: it grew by a 4 KB page per commit
    (2 GB after a benchmark afternoon). Two writers of 15,000 rows each now leave a WAL
    of a few megabytes."""
    path = tmp_path / "events.sqlite3"
    writers = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), "15000"], env=environment()) for _ in range(2)]
    largest = 0
    while any(writer.poll() is None for writer in writers):
        if (tmp_path / "events.sqlite3-wal").exists():
            largest = max(largest, (tmp_path / "events.sqlite3-wal").stat().st_size)
        time.sleep(0.05)
    assert [writer.returncode for writer in writers] == [0, 0]
    assert read_count(path) == 30_000
    # Unbounded, 30,000 commits of one page each would be over 120 MB.
    assert largest < 32 * 1024 * 1024, largest


def read_count(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        count = connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    connection.close()
    return int(count)
