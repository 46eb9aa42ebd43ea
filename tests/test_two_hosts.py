"""Two hosts behind nginx: each a gunicorn in its own network namespace, one killed mid-load.

The deployment the README describes, for real: Debian's nginx on 127.0.0.1 balances
over two "machines" (network namespaces joined by veth pairs), each running gunicorn
with ``trusted_proxies = 1``, its own spool, and a webhook destination on the test's
side. The test proves:

- traffic reaches both hosts, and ``context.ip`` is the client's address, not nginx's
  (also when the client sends its own ``X-Forwarded-For``);
- while the destination is failing (events spooled) one host is killed with SIGKILL in
  the middle of the load: every request still gets a 200 (nginx retries the other
  host), and every event that got a 200 reaches the destination in the end;
- the killed host, started again, drains its spool once the destination is back.

Draining uses ``[spool] drain_interval`` where the app has it (the background drainer);
on a build without it the test replays that host's spool with ``pixel-wsgi spool replay``
run inside its namespace, which proves the same data survived the kill.

Runs as root (``ip netns``); CI does.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pixel_wsgi.config import load_config
from pixel_wsgi.errors import ConfigError

from .support.delivery import spooled_message_ids
from .support.hosts import Host, nginx
from .support.processes import environment, write_toml
from .support.servers import free_port, http_get
from .support.sink import Reply, Sink

WRITE_KEY = "two-hosts-key"
PORT = 8000
# The README's nginx snippet: the upstream block at http level, the rest in the location.
NGINX_UPSTREAM = """\
    # Pixel URLs carry the event in the query string: up to 32 KiB.
    large_client_header_buffers 4 48k;
    upstream pixel {
{servers}
        keepalive 16;
    }
"""
NGINX_LOCATION = """\
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # A host that is down, or cannot keep an event (503), is skipped: GET is safe
            # to send again, and the messageId lets destinations drop a duplicate.
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 2;
            proxy_connect_timeout 1s;
            proxy_read_timeout 10s;
"""


def has_drainer() -> bool:
    """Whether this build has the background drainer: does the config accept its key?"""
    try:
        load_config(
            {"sources": [{"name": "s", "write_key": "k"}], "destinations": {"m": {"type": "memory"}}, "spool": {"drain_interval": 1}}
        )
    except ConfigError:
        return False
    return True


HAS_DRAINER = has_drainer()


def host_config(directory: Path, name: str, sink_url: str) -> Path:
    directory.mkdir()
    spool: dict[str, object] = {"path": str(directory / "spool.sqlite3")}
    if HAS_DRAINER:
        spool["drain_interval"] = 1
    return write_toml(
        directory / "pixel.toml",
        {
            "trusted_proxies": 1,
            "sources": [{"name": "site", "write_key": WRITE_KEY}],
            "destinations": {"hook": {"type": "webhook", "url": sink_url, "headers": {"X-Host": name}, "timeout": 1, "retries": 0}},
            "spool": spool,
            "dispatch": {"budget": 1.0, "breaker_failures": 3, "breaker_cooldown": 0.5},
        },
    )


def start_gunicorn(host: Host, config: Path, log: Path):
    env = {**environment(), "PIXEL_WSGI_CONFIG": str(config)}
    command = [sys.executable, "-m", "gunicorn", "--bind", f"{host.address}:{PORT}", "--workers", "2", "--threads", "2",
               "--graceful-timeout", "2", "pixel_wsgi:create_app()"]  # fmt: skip
    process = host.start(command, output=log, env=env)
    deadline = time.monotonic() + 30
    while log.read_text(errors="replace").count("Booting worker") < 2 * (1 + log.read_text(errors="replace").count("Shutting down")):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.05)
    # Ready when it answers through its own namespace's network.
    while host.run(
        ["python3", "-c", f"import urllib.request; urllib.request.urlopen('http://{host.address}:{PORT}/pixel/v1/health')"], env=env
    ).returncode:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.1)
    return process


class Client:
    """Sends pixels through nginx; remembers the answer for each messageId."""

    def __init__(self, url: str) -> None:
        self.port = int(url.rsplit(":", 1)[1])
        self.answers: dict[str, int] = {}
        self.lock = threading.Lock()
        self.sent = 0

    def send(self, message_id: str, headers: dict[str, str] | None = None) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            path = f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=reader&event=Opened&messageId={message_id}"
            connection.request("GET", path, headers=headers or {})
            status = connection.getresponse().status
        except OSError:
            status = 0
        finally:
            connection.close()
        with self.lock:
            self.answers[message_id] = status
            self.sent += 1
        return status


@pytest.mark.slow
def test_two_hosts_behind_nginx_lose_nothing_when_one_is_killed(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("this test creates network namespaces: run the suite as root (CI does)")
    tag = os.getpid() % 200 + 20  # distinct names and subnets if two runs overlap
    with Host(f"px{tag}a", tag) as host_a, Host(f"px{tag}b", tag + 1) as host_b, Sink(host=host_a.gateway) as sink:
        config_a = host_config(tmp_path / "a", "a", sink.url)
        config_b = host_config(tmp_path / "b", "b", sink.url)
        gunicorn_a = start_gunicorn(host_a, config_a, tmp_path / "a" / "gunicorn.log")
        start_gunicorn(host_b, config_b, tmp_path / "b" / "gunicorn.log")

        (tmp_path / "nginx").mkdir()
        upstreams = [f"{h.address}:{PORT}" for h in (host_a, host_b)]
        with nginx(tmp_path / "nginx", free_port(), upstreams, NGINX_UPSTREAM, NGINX_LOCATION) as nginx_url:
            client = Client(nginx_url)

            # 1. Both hosts serve; context.ip is the client's, whatever it claims.
            for n in range(20):
                assert client.send(f"warm-{n}", {"X-Forwarded-For": "203.0.113.9"} if n % 2 else None) == 200
            warm = sink.wait_for(20)
            assert {r.headers["X-Host"] for r in warm} == {"a", "b"}
            assert {r.json["context"]["ip"] for r in warm} == {"127.0.0.1"}

            # 2. The destination fails: events go to each host's spool. Host a is killed
            #    in the middle of the load; nginx sends its share to b.
            sink.default = Reply(503)
            killed = threading.Event()

            def load(n: int) -> int:
                if n == 150 and not killed.is_set():
                    killed.set()
                    Host.kill(gunicorn_a)
                return client.send(f"outage-{n}")

            with ThreadPoolExecutor(6) as pool:
                statuses = list(pool.map(load, range(300)))
            assert killed.is_set()
            assert statuses.count(200) == 300, {s: statuses.count(s) for s in set(statuses)}
            spooled_on_a = spooled_message_ids(tmp_path / "a" / "spool.sqlite3")
            assert spooled_on_a, "host a kept nothing before it was killed"

            # 3. The destination is back; b delivers and drains, a comes back and drains.
            sink.default = Reply(200)
            for n in range(20):
                assert client.send(f"after-{n}") == 200
            start_gunicorn(host_a, config_a, tmp_path / "a" / "gunicorn.log")
            for host, config in ((host_a, config_a), (host_b, config_b)):
                drain(host, config, tmp_path / config.parent.name / "spool.sqlite3")

            delivered = set(sink.delivered_message_ids())
            accepted = {message_id for message_id, status in client.answers.items() if status == 200}
            assert accepted - delivered == set(), f"{len(accepted - delivered)} events that got a 200 never arrived"
            assert spooled_on_a <= {r.json["messageId"] for r in sink.delivered if r.headers["X-Host"] == "a"}
            assert http_get(nginx_url + "/pixel/v1/health")[0] == 200


def drain(host: Host, config: Path, spool: Path) -> None:
    """Wait for the background drainer, or (on a build without one) replay the spool."""
    if not HAS_DRAINER:
        env = {**environment(), "PIXEL_WSGI_CONFIG": str(config)}
        result = host.run([sys.executable, "-m", "pixel_wsgi", "spool", "replay"], env=env)
        assert result.returncode == 0, result.stdout + result.stderr
    deadline = time.monotonic() + 60
    while spooled_message_ids(spool):
        assert time.monotonic() < deadline, f"{len(spooled_message_ids(spool))} events still in {spool}"
        time.sleep(0.2)
