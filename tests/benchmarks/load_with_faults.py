"""Load with faults: does every event that got a 200 end up delivered or spooled?

    python tests/benchmarks/load_with_faults.py [--seconds 60] [--clients 8]

Starts, all on 127.0.0.1 free ports and all stopped at the end:

- an HTTP sink (``tests/support/sink.py``) as the only destination, a webhook. It flaps:
  up, then answering 500 to a share of requests, then gone (connection refused), and
  back, in a cycle, so that retries, the circuit breaker and the spool all work;
- gunicorn with 2 gthread workers of 4 threads each, serving ``pixel_wsgi:create_app()``;
- a load generator: client threads with keep-alive connections, each request with its
  own messageId. Half-way through, one gunicorn worker is killed with SIGKILL; gunicorn
  starts another.

At the end it accounts for every messageId that got a 200: in the sink (delivered) or
in the spool. It prints requests, statuses, 5xx, client errors (requests cut by the
kill, which never got a 200) and lost, and exits 1 if anything was lost or a 5xx came
back. ``tests/test_load_with_faults.py`` runs a short version of it.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Set

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runnable on its own from any directory
    sys.path.insert(0, str(ROOT))

from tests.support.delivery import spooled_message_ids  # noqa: E402
from tests.support.servers import free_port, wait_for_port  # noqa: E402
from tests.support.sink import Sink  # noqa: E402

WRITE_KEY = "load-write-key"
LOOPBACK = "127.0.0.1"


@dataclass
class Figures:
    seconds: float = 0.0
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    client_errors: int = 0
    accepted: Set[str] = field(default_factory=set)
    delivered: Set[str] = field(default_factory=set)
    spooled: Set[str] = field(default_factory=set)
    killed_worker: int | None = None
    workers_at_end: int = 0
    sink_states: Counter = field(default_factory=Counter)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    @property
    def lost(self) -> Set[str]:
        return self.accepted - self.delivered - self.spooled

    def summary(self) -> Dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "requests": self.requests,
            "requests_per_second": round(self.requests / self.seconds, 1) if self.seconds else 0,
            "statuses": dict(sorted(self.statuses.items())),
            "5xx": self.server_errors,
            "client_errors": self.client_errors,
            "accepted": len(self.accepted),
            "delivered": len(self.accepted & self.delivered),
            "spooled": len(self.accepted & self.spooled),
            "delivered_and_spooled": len(self.accepted & self.delivered & self.spooled),
            "lost": len(self.lost),
            "killed_worker": self.killed_worker,
            "workers_at_end": self.workers_at_end,
        }


def write_config(directory: Path, sink_url: str) -> Path:
    path = directory / "pixel.toml"
    path.write_text(
        f"""
[[sources]]
name = "load"
write_key = "{WRITE_KEY}"

[destinations.sink]
type = "webhook"
url = "{sink_url}/events"
timeout = 0.5
retries = 1

[spool]
path = "{directory / "spool.sqlite3"}"

[dispatch]
budget = 1.0
breaker_failures = 5
breaker_cooldown = 1.0
""",
        encoding="utf-8",
    )
    return path


def children(pid: int) -> List[int]:
    """The process ids whose parent is ``pid`` (gunicorn's workers), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def flap(sink: Sink, stop: threading.Event, period: float, figures: Figures) -> None:
    """Up, failing (500 to 30 %), gone, up again ... until ``stop``; always up at the end."""
    states = ("up", "failing", "gone")
    index = 0
    while not stop.wait(period):
        index = (index + 1) % len(states)
        state = states[index]
        figures.sink_states[state] += 1
        if state == "up":
            sink.fail_rate = 0.0
            if not sink.running:
                sink.start()
        elif state == "failing":
            sink.fail_rate = 0.3
        else:
            sink.stop()
    sink.fail_rate = 0.0
    if not sink.running:
        sink.start()


def client(number: int, port: int, stop: threading.Event, figures: Figures, lock: threading.Lock) -> None:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    sequence = 0
    statuses: Counter = Counter()
    accepted: List[str] = []
    errors = 0
    try:
        while not stop.is_set():
            sequence += 1
            message_id = f"c{number}-{sequence}"
            path = (
                f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=load-{number}&event=Opened"
                f"&messageId={message_id}&properties.sequence={sequence}&context.page.path=/load"
            )
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                # Cut by the worker kill (or a server-side close): no 200, reconnect.
                errors += 1
                connection.close()
                connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
                continue
            statuses[response.status] += 1
            if response.status == 200:
                accepted.append(message_id)
            if response.getheader("Connection", "").lower() == "close":
                connection.close()
                connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    finally:
        connection.close()
        with lock:
            figures.requests += sum(statuses.values()) + errors
            figures.statuses.update(statuses)
            figures.client_errors += errors
            figures.accepted.update(accepted)


def delivered_ids(sink: Sink) -> Set[str]:
    """MessageIds the sink took whole; a body cut short (a killed worker, the sink stopping
    mid-request) is no delivery, whatever the sink answered."""
    found = set()
    for record in sink.delivered:
        try:
            found.add(record.json["messageId"])
        except (ValueError, KeyError, TypeError):
            continue
    return found


def run(seconds: float = 60.0, clients: int = 8, flap_period: float = 2.0, verbose: bool = True) -> Figures:
    figures = Figures()
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="pixel-load-") as tmp:
        directory = Path(tmp)
        sink = Sink().start()
        port = free_port()
        config = write_config(directory, sink.url)
        log_path = directory / "gunicorn.log"
        env = {**os.environ, "PIXEL_WSGI_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
        command = [
            sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class", "gthread", "--threads", "4",
            "--bind", f"{LOOPBACK}:{port}", "--graceful-timeout", "5", "--keep-alive", "5",
            "pixel_wsgi:create_app()",
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            gunicorn = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        stop_load, stop_flap = threading.Event(), threading.Event()
        threads: List[threading.Thread] = []
        try:
            wait_for_port(port, process=gunicorn, timeout=30.0)
            flapper = threading.Thread(target=flap, args=(sink, stop_flap, flap_period, figures), daemon=True)
            flapper.start()
            threads = [threading.Thread(target=client, args=(n, port, stop_load, figures, lock), daemon=True) for n in range(clients)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            # Half-way through, a worker dies without any chance to clean up.
            stop_load.wait(seconds / 2)
            workers = children(gunicorn.pid)
            if workers:
                figures.killed_worker = workers[0]
                os.kill(workers[0], signal.SIGKILL)
            stop_load.wait(seconds / 2)
            stop_load.set()
            for thread in threads:
                thread.join(30)
            figures.seconds = time.monotonic() - started
            figures.workers_at_end = len(children(gunicorn.pid))
            stop_flap.set()
            flapper.join(10)
        finally:
            stop_load.set()
            stop_flap.set()
            if gunicorn.poll() is None:
                gunicorn.send_signal(signal.SIGTERM)
                try:
                    gunicorn.wait(15)
                except subprocess.TimeoutExpired:
                    gunicorn.kill()
                    gunicorn.wait(5)
            sink.stop()
        figures.delivered = delivered_ids(sink)
        figures.spooled = spooled_message_ids(directory / "spool.sqlite3")
        log_text = log_path.read_text(errors="replace")
        if verbose and (figures.lost or figures.server_errors):
            print(log_text[-5000:], file=sys.stderr)
    return figures


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load runs (default 60)")
    parser.add_argument("--clients", type=int, default=8, help="client threads, one keep-alive connection each (default 8)")
    parser.add_argument("--flap-period", type=float, default=2.0, help="seconds between sink state changes (default 2)")
    args = parser.parse_args(argv)
    figures = run(args.seconds, args.clients, args.flap_period)
    summary = figures.summary()
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    if figures.lost:
        print("lost messageIds:", ", ".join(sorted(figures.lost)[:20]), file=sys.stderr)
    return 1 if figures.lost or figures.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
