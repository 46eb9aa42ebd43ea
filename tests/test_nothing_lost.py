"""The "nothing is lost" promise under gunicorn: an event that got a 200 is at its destination or
in the spool, whatever the destination does; after a replay it is at the destination.

gunicorn runs 2 workers x 4 threads (gthread) in a subprocess on a free loopback port;
the webhook sink fails about 30 % of requests at random and is unreachable for a stretch
in the middle of 2,000 pixel requests sent by a thread pool.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from pixel_wsgi.spool import Spool
from tests.support.delivery import delivery_config, track_url
from tests.support.processes import environment, free_port, run_cli, write_toml
from tests.support.sink import Sink

REQUESTS = 2000
CLIENT_THREADS = 8


def start_gunicorn(config_path: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = environment()
    env["PIXEL_WSGI_CONFIG"] = str(config_path)
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn",
                "--workers", "2", "--threads", "4", "--worker-class", "gthread",
                "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "2", "--timeout", "30",
                # The app is built once in the arbiter, then forked: nothing may be open by then.
                "--preload",
                "pixel_wsgi:create_app()",
            ],
            env=env,
            cwd=str(config_path.parent),
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def wait_until_serving(base: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    with requests.Session() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail("gunicorn exited:\n" + log_path.read_text(errors="replace")[-3000:])
            try:
                if session.head(base + "/pixel/v1/track", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
    pytest.fail("gunicorn did not start in 30 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_nothing_lost_under_gunicorn(tmp_path):
    with Sink() as sink:
        sink.fail_rate = 0.3
        config = delivery_config(
            tmp_path,
            {"hook": {"type": "webhook", "url": sink.url + "/events", "timeout": 0.5, "retries": 3}},
            budget=1.0,
            breaker_failures=5,
            breaker_cooldown=0.3,
        )
        config_path = write_toml(tmp_path / "pixel.toml", config)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = tmp_path / "gunicorn.log"
        process = start_gunicorn(config_path, port, log_path)
        sessions: list[requests.Session] = []
        local = threading.local()
        lock = threading.Lock()

        def send(message_id: str) -> tuple[str, int]:
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = requests.Session()
                with lock:
                    sessions.append(session)
            try:
                return message_id, session.get(base + track_url(message_id), timeout=15).status_code
            except requests.RequestException:
                return message_id, 0

        try:
            wait_until_serving(base, process, log_path)
            message_ids = [f"lost-not-{number:04d}" for number in range(REQUESTS)]
            statuses: dict[str, int] = {}
            started = time.monotonic()
            with ThreadPoolExecutor(CLIENT_THREADS) as pool:
                # A quarter with the flaky sink, a quarter with no sink at all, then flaky again.
                for index, chunk in enumerate(message_ids[i : i + REQUESTS // 4] for i in range(0, REQUESTS, REQUESTS // 4)):
                    if index == 1:
                        sink.stop()
                    elif index == 2:
                        sink.start()
                    statuses.update(pool.map(send, chunk))
            elapsed = time.monotonic() - started
        finally:
            for session in sessions:
                session.close()
            stop(process)

        accepted = {message_id for message_id, status in statuses.items() if status == 200}
        assert len(accepted) == REQUESTS, {s for s in statuses.values() if s != 200}
        spool = Spool(config["spool"]["path"])
        try:
            spooled = {row.message_id for row in spool.all()}
        finally:
            spool.close()
        delivered = set(sink.delivered_message_ids())
        assert accepted <= delivered | spooled
        assert spooled, "the sink failed 30 % and was down: something must have been spooled"
        print(f"\n{REQUESTS} requests in {elapsed:.1f}s; {len(delivered)} delivered, {len(spooled)} spooled")

        sink.fail_rate = 0.0
        replayed = run_cli("spool", "replay", "--config", str(config_path), timeout=120)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert accepted <= set(sink.delivered_message_ids())
        spool = Spool(config["spool"]["path"])
        try:
            assert spool.all() == []
        finally:
            spool.close()
