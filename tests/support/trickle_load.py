"""gunicorn gthread 2x4 with a webhook that trickles its answer, against the same run with
a healthy webhook: the figures for the README (``python -m tests.support.trickle_load``).

Each run: a SQLite store and a webhook per event, ``budget`` 3 s; a warm-up that opens
the breaker of each worker when the webhook trickles; then ``wrk`` (8 connections,
10 s) reports the rate and the slowest answer.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from .delivery import WRITE_KEY, delivery_config
from .processes import environment, write_toml
from .servers import gunicorn, http_get
from .sink import Sink
from .trickle import TrickleServer

BUDGET = 3.0
PIXEL = f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=load&event=Opened"


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def run(folder: Path, trickling: bool, duration: int = 10) -> dict[str, float]:
    with ExitStack() as stack:
        webhook_url = stack.enter_context(TrickleServer(interval=2.0) if trickling else Sink()).url
        config = delivery_config(
            folder,
            {
                "store": {"type": "sqlite", "path": str(folder / "events.sqlite3")},
                "hook": {"type": "webhook", "url": webhook_url, "timeout": 5.0},
            },
            budget=BUDGET,
        )
        env = {**environment(), "PIXEL_WSGI_CONFIG": str(write_toml(folder / "pixel.toml", config))}
        server = stack.enter_context(
            gunicorn(
                "pixel_wsgi:create_app()",
                output=folder / "gunicorn.log",
                env=env,
                workers=2,
                threads=4,
                # Each request's own time in the server (seconds), queueing excluded.
                args=["--access-logfile", str(folder / "access.log"), "--access-logformat", "%(L)s"],
            )
        )
        # Warm-up: enough failures in each worker to open its breaker (5 in a row);
        # these are the requests that wait for the trickling webhook.
        warm_up_times: list[float] = []

        def warm_up() -> None:
            for _ in range(8):
                started = time.monotonic()
                assert http_get(server.url + PIXEL, timeout=30)[0] == 200
                warm_up_times.append(time.monotonic() - started)

        # Four clients: no more than a worker has threads, so none waits in a queue.
        warm = [threading.Thread(target=warm_up) for _ in range(4)]
        for thread in warm:
            thread.start()
        for thread in warm:
            thread.join()
        output = subprocess.run(
            ["wrk", "-t2", "-c8", f"-d{duration}s", "--latency", server.url + PIXEL], capture_output=True, text=True, check=True
        ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    latency = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", output).group(1)  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rate": rate,
        "max_latency_s": _seconds(latency),
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
        "warm_up_max_s": max(warm_up_times),
        "server_max_s": max(float(line) for line in (folder / "access.log").read_text().split()),
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as healthy_folder, tempfile.TemporaryDirectory() as trickle_folder:
        healthy = run(Path(healthy_folder), trickling=False)
        trickle = run(Path(trickle_folder), trickling=True)
    print(f"healthy webhook:   {healthy}")
    print(f"trickling webhook: {trickle}")
    slowest = max(trickle["max_latency_s"], trickle["warm_up_max_s"])
    print(
        f"throughput ratio {trickle['rate'] / healthy['rate']:.2f}; slowest answer {slowest:.3f} s at the client,"
        f" {trickle['server_max_s']:.3f} s in the server (budget {BUDGET} s)"
    )
    sys.exit(0)
