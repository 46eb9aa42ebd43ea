"""No leaks on servers that start a thread per request.

Regression: ``pixel-wsgi serve`` opened a SQLite connection in each request's thread
and never closed it; under ``ulimit -n 1024`` every request from about the 500th on
was a 503, and memory grew about 115 KB per request.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from pixel_wsgi import PixelApp
from pixel_wsgi.resources import PerThread
from tests.support.delivery import delivery_config, track_url
from tests.support.leaks import DESCRIPTOR_LIMIT, run_serve
from tests.support.servers import http_get

# The README's figure is measured with 10,000 (python -m tests.support.leaks); the
# suite runs enough to go well past the old failure point under a 256 limit.
SUITE_REQUESTS = 1500


def test_a_thread_that_ends_closes_its_connection(tmp_path):
    opened: list[sqlite3.Connection] = []

    def open_connection() -> sqlite3.Connection:
        connection = sqlite3.connect(tmp_path / "db.sqlite3", check_same_thread=False)
        opened.append(connection)
        return connection

    per_thread = PerThread(open_connection, sqlite3.Connection.close)
    for _ in range(50):
        thread = threading.Thread(target=per_thread.get)
        thread.start()
        thread.join()
    gc.collect()
    assert len(opened) == 50
    assert len(per_thread) == 0
    for connection in opened:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            connection.execute("SELECT 1")


def test_close_closes_what_live_threads_hold(tmp_path):
    per_thread = PerThread(lambda: sqlite3.connect(tmp_path / "db.sqlite3", check_same_thread=False), sqlite3.Connection.close)
    connection = per_thread.get()
    assert len(per_thread) == 1
    per_thread.close()
    assert len(per_thread) == 0
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")
    # The thread gets a new one on its next use.
    per_thread.get().execute("SELECT 1")
    per_thread.close()


@pytest.mark.slow
def test_pixel_wsgi_serve_under_a_256_descriptor_limit_stays_flat(tmp_path):
    run = run_serve(tmp_path, SUITE_REQUESTS)
    assert run.statuses == {200: SUITE_REQUESTS}
    assert run.descriptor_spread <= 10, run.samples
    # 115 KB per request before the fix would be 170 MB here.
    assert run.memory_growth_kib < 20 * 1024, run.samples


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
def test_wsgiref_thread_per_request_server_stays_flat(tmp_path):
    destinations = {
        "store": {"type": "sqlite", "path": str(tmp_path / "events.sqlite3")},
        "lines": {"type": "jsonl", "path": str(tmp_path / "events.jsonl")},
    }
    app = PixelApp(delivery_config(tmp_path, destinations))
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        counts = []
        for number in range(600):
            assert http_get(base + track_url(f"m-wsgiref-{number}"))[0] == 200
            if number % 100 == 50:
                counts.append(_descriptors())
        assert max(counts) - min(counts) <= 10, counts
        assert max(counts) < DESCRIPTOR_LIMIT
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        app.close()
