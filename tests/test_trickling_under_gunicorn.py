"""gunicorn gthread 2x4 with a webhook that answers one byte every 2 s.

Regression: each request waited ~32 s for it (a read timeout restarts at every byte),
the server fell to 0.2 requests/s and the breaker never opened. Now each request is
done within the budget plus 0.25 s (measured by gunicorn itself, ``%(L)s``), the
breaker of each worker opens, and every event is stored or spooled.
"""

from __future__ import annotations

import threading

import pytest

from tests.support.delivery import delivery_config, spooled_message_ids, track_url
from tests.support.processes import environment, write_toml
from tests.support.servers import gunicorn, http_get
from tests.support.trickle import TrickleServer

# The default: a receive may wait up to 3 s, so a byte every 2 s never trips it.
BUDGET = 3.0


@pytest.mark.slow
def test_every_request_within_budget_and_the_breaker_opens(tmp_path):
    access_log = tmp_path / "access.log"
    answered: list[tuple[str, int]] = []
    with TrickleServer(interval=2.0) as slow:
        config = delivery_config(
            tmp_path,
            {"hook": {"type": "webhook", "url": slow.url, "timeout": 5.0, "retries": 3}},
            budget=BUDGET,
            breaker_failures=2,
        )
        env = {**environment(), "PIXEL_WSGI_CONFIG": str(write_toml(tmp_path / "pixel.toml", config))}
        args = ["--access-logfile", str(access_log), "--access-logformat", "%(L)s"]
        with gunicorn("pixel_wsgi:create_app()", output=tmp_path / "gunicorn.log", env=env, workers=2, threads=4, args=args) as server:

            def client(number: int) -> None:
                for sent in range(6):
                    message_id = f"m-{number}-{sent}"
                    answered.append((message_id, http_get(server.url + track_url(message_id), timeout=30)[0]))

            clients = [threading.Thread(target=client, args=(number,)) for number in range(4)]
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()
            server.stop()
        log = server.log()
    assert {status for _, status in answered} == {200}
    seconds = [float(line) for line in access_log.read_text().split()]
    assert len(seconds) == 24
    assert max(seconds) < BUDGET + 0.25, sorted(seconds)
    # Two failures in a worker open its breaker; after that the webhook is not tried.
    # Per worker, at most one failure before the last one plus what its 4 threads had
    # in flight then: 2 x (1 + 4) of the 24 requests.
    assert log.count("circuit open") >= 1, log
    assert slow.requests <= 2 * (1 + 4)
    assert spooled_message_ids(tmp_path / "spool.sqlite3") == {message_id for message_id, _ in answered}
