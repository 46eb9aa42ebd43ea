"""``pixel-wsgi serve`` under a small descriptor limit, fed sequential requests.

Used by the suite (a few thousand requests) and, for the figure in the README, run
alone::

    python -m tests.support.leaks 10000

Each request is a new connection, as a browser loading a pixel makes: werkzeug's
threaded server starts a thread for each, the case where per-thread connections leak.
"""

from __future__ import annotations

import http.client
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .processes import environment
from .servers import LOOPBACK, free_port, server_process

WRITE_KEY = "leak-write-key"
DESCRIPTOR_LIMIT = 256


@dataclass
class LeakRun:
    statuses: dict[int, int] = field(default_factory=dict)
    # (requests answered so far, open descriptors, resident memory in KiB)
    samples: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def descriptor_spread(self) -> int:
        counts = [fds for _, fds, _ in self.samples]
        return max(counts) - min(counts)

    @property
    def memory_growth_kib(self) -> int:
        return self.samples[-1][2] - self.samples[0][2]


def _resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def run_serve(folder: Path, requests: int, *, sample_every: int = 250) -> LeakRun:
    """Start ``pixel-wsgi serve`` limited to 256 descriptors, send ``requests`` pixels one by one."""
    port = free_port()
    command = [
        sys.executable, "-m", "pixel_wsgi", "serve", "--port", str(port), "--write-key", WRITE_KEY,
        "--db", str(folder / "events.sqlite3"), "--log-level", "WARNING",
    ]  # fmt: skip
    run = LeakRun()
    with server_process(command, output=folder / "serve.log", env=environment(), port=port, cwd=folder) as server:
        _limit_after_start(server.process)
        pid = server.process.pid
        for number in range(1, requests + 1):
            connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
            try:
                connection.request("GET", f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=a&event=Opened&messageId=leak-{number}")
                status = connection.getresponse().status
            finally:
                connection.close()
            run.statuses[status] = run.statuses.get(status, 0) + 1
            # The first sample after the first requests: the server's steady state.
            if number == min(50, requests) or number % sample_every == 0:
                run.samples.append((number, _open_descriptors(pid), _resident_kib(pid)))
        server.stop()
    return run


def _limit_after_start(process: subprocess.Popen[bytes]) -> None:
    """The limit is set on the running server (as ``ulimit -n`` in its shell would have)."""
    resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (DESCRIPTOR_LIMIT, DESCRIPTOR_LIMIT))


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with tempfile.TemporaryDirectory() as folder:
        result = run_serve(Path(folder), count, sample_every=1000)
    print(f"statuses {result.statuses}")
    for answered, fds, rss in result.samples:
        print(f"after {answered:>6} requests: {fds:>3} open descriptors, {rss / 1024:.1f} MiB resident")
    print(f"descriptor spread {result.descriptor_spread}, memory growth {result.memory_growth_kib / 1024:.1f} MiB")
