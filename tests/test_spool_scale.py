"""The spool with real processes: gunicorn's background drainer after an outage, two
``spool replay`` at once, a replay beside the drainer, a killed drainer, the bound.

Every server is a subprocess on a free loopback port, stopped by its context manager;
the destination is a real HTTP sink in this process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pixel_wsgi.spool import Spool
from tests.support.delivery import delivery_config, spooled_message_ids, track_url
from tests.support.processes import environment, run_cli, write_toml
from tests.support.servers import gunicorn, http_get, server_process
from tests.support.sink import Reply, Sink

pytestmark = pytest.mark.slow

# The request path spools an event that found its destination down as due again in a
# minute (a circuit-open one after the breaker's cooldown): the drainer honours that.
OUTAGE_DRAIN_TIMEOUT = 150.0


def fill(spool_path: Path, destination: str, count: int) -> list[str]:
    """``count`` events waiting for ``destination``, due now, written through ``Spool``."""
    spool = Spool(str(spool_path))
    message_ids = [f"m-{number}" for number in range(count)]
    try:
        connection = spool._connection()
        connection.execute("BEGIN")
        for message_id in message_ids:
            body = json.dumps({"type": "track", "event": "Opened", "messageId": message_id, "anonymousId": "a"}).encode()
            spool.add(destination, message_id, "web", body, attempts=1, error="down")
        connection.execute("COMMIT")
    finally:
        spool.close()
    return message_ids


def send_pixels(base_url: str, message_ids: list[str], **params: str) -> dict[str, tuple[int, bytes]]:
    """GET a track pixel per messageId, 8 at a time: ``{messageId: (status, body)}``."""

    def one(message_id: str) -> tuple[int, bytes]:
        status, _, body = http_get(base_url + track_url(message_id, **params))
        return status, body

    with ThreadPoolExecutor(8) as pool:
        return dict(zip(message_ids, pool.map(one, message_ids)))


def replay_command(config_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pixel_wsgi", "spool", "replay", "--config", str(config_path), *extra]


def hook_config(tmp_path: Path, sink: Sink, **spool: Any) -> dict[str, Any]:
    config = delivery_config(
        tmp_path, {"hook": {"type": "webhook", "url": sink.url, "timeout": 1.0, "retries": 0}}, breaker_failures=1, breaker_cooldown=1.0
    )
    config["spool"].update(spool)
    return config


class DownSink:
    """A destination that is down: its port refuses connections until ``come_back()``.

    The port stays bound (not listening, without SO_REUSEADDR) while it is down, so no
    other process on the machine can take it meanwhile and answer in the sink's place.
    """

    def __init__(self) -> None:
        self._hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._hold.bind(("127.0.0.1", 0))
        self.sink = Sink(self._hold.getsockname()[1])

    def come_back(self) -> Sink:
        self._hold.close()
        return self.sink.start()

    def close(self) -> None:
        self._hold.close()
        self.sink.stop()


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def test_gunicorn_drains_the_spool_after_an_outage_with_no_command_run(tmp_path):
    down = DownSink()  # connection refused
    sink = down.sink
    config = hook_config(tmp_path, sink, drain_interval=0.5)
    spool_path = Path(config["spool"]["path"])
    config_path = write_toml(tmp_path / "pixel.toml", config)
    message_ids = [f"outage-{number}" for number in range(100)]
    env = {**environment(), "PIXEL_WSGI_CONFIG": str(config_path)}
    # --preload: the app is built before the fork; the drainer must start in the workers.
    with gunicorn("pixel_wsgi:create_app()", output=tmp_path / "gunicorn.log", env=env, workers=2, threads=4, args=["--preload"]) as server:
        try:
            answers = send_pixels(server.url, message_ids)
            refused = {message_id: body for message_id, (status, body) in answers.items() if status != 200}
            assert not refused, f"{len(refused)} refused: {set(refused.values())}\n{server.log()[-4000:]}"
            assert spooled_message_ids(spool_path) == set(message_ids)
            outage_ended = time.monotonic()
            down.come_back()  # on the same port; nobody runs a command
            wait_until(lambda: set(message_ids) <= set(sink.delivered_message_ids()), OUTAGE_DRAIN_TIMEOUT, "every event delivered")
            wait_until(lambda: not spooled_message_ids(spool_path), 10, "the spool empty")
            print(f"\n100 events spooled in an outage reached the sink {time.monotonic() - outage_ended:.1f} s after it came back")
            # Two workers, each with a drainer: still each event once.
            assert Counter(sink.delivered_message_ids()) == Counter(message_ids)
            assert "Traceback" not in server.log()
        finally:
            down.close()


def test_two_replays_at_once_one_exits_75_and_no_event_is_sent_twice(tmp_path):
    with Sink() as sink:
        sink.default = Reply(delay=0.01)
        config = hook_config(tmp_path, sink)
        message_ids = fill(Path(config["spool"]["path"]), "hook", 4000)
        config_path = write_toml(tmp_path / "pixel.toml", config)
        replays = [
            subprocess.Popen(replay_command(config_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
            for _ in range(2)
        ]
        results = [(replay.wait(120), *replay.communicate()) for replay in replays]
        assert sorted(code for code, _, _ in results) == [0, 75], results
        _, out, err = next(result for result in results if result[0] == 75)
        assert "is being drained by pixel-wsgi spool replay (pid" in err and "nothing was sent" in err
        assert out == ""
        assert Counter(sink.delivered_message_ids()) == Counter(message_ids)


def test_a_replay_beside_the_background_drainer_exits_75(tmp_path):
    with Sink() as sink:
        sink.default = Reply(delay=0.05)
        config = hook_config(tmp_path, sink, drain_interval=0.2)
        spool_path = Path(config["spool"]["path"])
        message_ids = fill(spool_path, "hook", 1500)
        config_path = write_toml(tmp_path / "pixel.toml", config)
        env = {**environment(), "PIXEL_WSGI_CONFIG": str(config_path)}
        with gunicorn("pixel_wsgi:create_app()", output=tmp_path / "gunicorn.log", env=env, workers=2) as server:
            # The drainer of each worker starts with the first request it serves.
            send_pixels(server.url, [f"live-{number}" for number in range(8)])
            wait_until(lambda: len(sink.requests) > 20, 30, "the drainer sending")
            second = run_cli("spool", "replay", "--config", str(config_path))
            assert second.returncode == 75, second.stdout + second.stderr
            assert "is being drained by the background drainer (pid" in second.stderr
            wait_until(lambda: not spooled_message_ids(spool_path), 120, "the spool drained")
        assert Counter(sink.delivered_message_ids()) == Counter(message_ids + [f"live-{number}" for number in range(8)])


def test_a_killed_drainer_frees_the_spool_at_once(tmp_path):
    with Sink() as sink:
        config = hook_config(tmp_path, sink)
        spool_path = config["spool"]["path"]
        fill(Path(spool_path), "hook", 3)
        config_path = write_toml(tmp_path / "pixel.toml", config)
        holder = subprocess.Popen(
            [sys.executable, "-c", f"from pixel_wsgi.drain_lock import DrainLock; assert DrainLock({spool_path!r}, 'a test').acquire(); print('held', flush=True); import time; time.sleep(60)"],
            stdout=subprocess.PIPE,
            text=True,
            env=environment(),
        )  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            refused = run_cli("spool", "replay", "--config", str(config_path))
            assert refused.returncode == 75 and f"a test (pid {holder.pid})" in refused.stderr
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(10)  # the kernel has closed its files: the lock is free
            replayed = run_cli("spool", "replay", "--config", str(config_path))
            assert replayed.returncode == 0, replayed.stderr
            assert "hook: 3 delivered" in replayed.stdout
        finally:
            if holder.poll() is None:
                holder.kill()
            holder.communicate(timeout=10)


def test_a_spool_at_its_bound_answers_503_and_loses_nothing_that_got_a_200(tmp_path):
    down = DownSink()
    sink = down.sink
    config = hook_config(tmp_path, sink, max_bytes=1 << 20, drain_interval=0)
    spool_path = Path(config["spool"]["path"])
    config_path = write_toml(tmp_path / "pixel.toml", config)
    env = {**environment(), "PIXEL_WSGI_CONFIG": str(config_path)}
    message_ids = [f"big-{number}" for number in range(400)]
    try:
        with gunicorn(
            "pixel_wsgi:create_app()", output=tmp_path / "gunicorn.log", env=env, workers=2, threads=4, args=["--limit-request-line", "0"]
        ) as server:
            answers = send_pixels(server.url, message_ids, **{"properties.padding": "x" * 4000})
            statuses = Counter(status for status, _ in answers.values())
            assert set(statuses) == {200, 503}, statuses
            assert all(body == b"spool is full" for status, body in answers.values() if status == 503)
            accepted = {message_id for message_id, (status, _) in answers.items() if status == 200}
            assert spooled_message_ids(spool_path) == accepted
            assert "rejected 503 /pixel/v1/track: spool is full" in server.log()
            listed = run_cli("spool", "list", "--config", str(config_path))
            assert "of 1.0 MiB" in listed.stdout, listed.stdout

            down.come_back()
            replayed = run_cli("spool", "replay", "--config", str(config_path))
            assert replayed.returncode == 0, replayed.stderr
            assert set(sink.delivered_message_ids()) == accepted
            assert os.path.getsize(spool_path) < 100_000
            # Room again: the server takes events straight away.
            assert http_get(server.url + track_url("after"))[0] == 200
    finally:
        down.close()
    print(f"\n{statuses[200]} events accepted up to the 1 MiB bound, {statuses[503]} answered 503 spool is full")


def test_a_file_size_limit_below_max_bytes_answers_503_and_loses_nothing(tmp_path):
    """An operator's ulimit -f (or a nearly full disk) reached before ``max_bytes``: still a 503, never a 200 unstored."""
    down = DownSink()
    sink = down.sink
    config = hook_config(tmp_path, sink, drain_interval=0)
    spool_path = Path(config["spool"]["path"])
    config_path = write_toml(tmp_path / "pixel.toml", config)
    env = {**environment(), "PIXEL_WSGI_CONFIG": str(config_path), "PYTHONUNBUFFERED": "1"}
    limit = 2 << 20
    # The limit is set in the process that becomes gunicorn, so the workers inherit it.
    command = [
        sys.executable, "-c",
        "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (%d, %d)); "
        "os.execv(sys.executable, [sys.executable, '-m', 'gunicorn', *sys.argv[1:]])" % (limit, limit),
        "--bind", "127.0.0.1:0", "--workers", "2", "--threads", "4", "--limit-request-line", "0", "pixel_wsgi:create_app()",
    ]  # fmt: skip

    def ready(log: str) -> str | None:
        match = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", log)
        return match.group(1) if match and log.count("Booting worker") >= 2 else None

    message_ids = [f"big-{number}" for number in range(600)]
    try:
        with server_process(command, output=tmp_path / "gunicorn.log", env=env, ready=ready) as server:
            answers = send_pixels(server.url, message_ids, **{"properties.padding": "x" * 8000})
            statuses = Counter(status for status, _ in answers.values())
            assert set(statuses) == {200, 503}, statuses
            accepted = {message_id for message_id, (status, _) in answers.items() if status == 200}
            assert spooled_message_ids(spool_path) == accepted
            assert all(body == b"spool is full" for status, body in answers.values() if status == 503)
            # The cause once per worker, then one line per refused event, and no traceback.
            assert "is not writable (disk I/O error" in server.log()
            assert "Traceback" not in server.log()
    finally:
        down.close()
    print(f"\nunder a {limit >> 20} MiB file size limit: {statuses[200]} accepted, {statuses[503]} answered 503")


def test_a_worker_killed_mid_drain_hands_the_spool_to_another(tmp_path):
    """kill -9 of the worker that drains: another worker's drainer takes over at once.

    Events the killed worker had sent but not yet removed from the spool are sent again
    (at least once): at most one page of them.
    """
    with Sink() as sink:
        sink.default = Reply(delay=0.02)
        config = hook_config(tmp_path, sink, drain_interval=0.2)
        spool_path = Path(config["spool"]["path"])
        message_ids = fill(spool_path, "hook", 3000)
        config_path = write_toml(tmp_path / "pixel.toml", config)
        lock_path = Path(str(spool_path) + ".drain-lock")
        env = {**environment(), "PIXEL_WSGI_CONFIG": str(config_path)}
        with gunicorn("pixel_wsgi:create_app()", output=tmp_path / "gunicorn.log", env=env, workers=2) as server:
            # Each worker's drainer starts with the first request that worker serves.
            send_pixels(server.url, [f"live-{number}" for number in range(16)])
            wait_until(lambda: len(sink.requests) > 300, 60, "the drainer sending")
            holder = re.search(r"pid (\d+)", lock_path.read_text())
            assert holder is not None
            killed = int(holder.group(1))
            os.kill(killed, signal.SIGKILL)
            # A drainer starts with the first request its worker serves: traffic goes on,
            # and the worker that serves it (the other one, or the one gunicorn starts in
            # place of the killed one) takes the spool over. Without this, all 16 pixels
            # above could have gone to the killed worker (seen in CI).
            send_pixels(server.url, [f"after-{number}" for number in range(16)])
            wait_until(lambda: not spooled_message_ids(spool_path), 120, "the spool drained by another worker")
            new_holder = re.search(r"pid (\d+)", lock_path.read_text())
            assert new_holder is not None and int(new_holder.group(1)) != killed
        delivered = Counter(sink.delivered_message_ids())
        live = {f"{when}-{number}" for when in ("live", "after") for number in range(16)}
        assert set(delivered) == set(message_ids) | live
        again = sum(count - 1 for count in delivered.values())
        print(f"\nkill -9 of the draining worker: {again} events sent twice")
        assert again <= 200 + 16  # one page, and the units under way
