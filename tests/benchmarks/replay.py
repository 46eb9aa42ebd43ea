#!/usr/bin/env python3
"""How fast ``pixel-wsgi spool replay`` drains a spool, to a webhook and in batches.

    python tests/benchmarks/replay.py                  # 20,000 events each way, about a minute
    python tests/benchmarks/replay.py --events 5000    # quicker

A spool of ``--events`` track events (about 300 bytes each) is written straight into
a SQLite file, then ``pixel-wsgi spool replay`` runs as a subprocess against a sink in
this process that answers every POST after ``--latency`` seconds (10 ms: a destination
in the same region). Measured: events per second from the start of the command to its
exit (Python start-up included), each event checked to arrive exactly once.

- ``replay_events_per_s``: a ``webhook`` destination, one POST per event. Each
  request waits ``latency``, so the rate is at most concurrency ÷ latency: 800/s for
  the default ``--concurrency 8`` against 10 ms; ``--concurrency`` here sets it
  (default 32).
- ``replay_batch_events_per_s``: a ``rudderstack`` destination, ``batch_size`` 100
  events per POST to ``/v1/batch``, at the default concurrency.

The last line is JSON, for the main benchmark to merge. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:  # run from a checkout without `pip install -e`
    sys.path.insert(0, ROOT)

from pixel_wsgi.spool import Spool  # noqa: E402
from tests.support.processes import environment, write_toml  # noqa: E402
from tests.support.sink import Reply, Sink  # noqa: E402


def fill(path: Path, count: int) -> None:
    spool = Spool(str(path))
    try:
        connection = spool._connection()
        connection.execute("BEGIN")
        for number in range(count):
            event = {"type": "track", "event": "Opened", "messageId": f"m-{number}", "anonymousId": "a", "properties": {"x": "y" * 200}}
            spool.add("target", f"m-{number}", "web", json.dumps(event).encode(), attempts=1, error="down")
        connection.execute("COMMIT")
    finally:
        spool.close()


def delivered_ids(sink: Sink) -> list[str]:
    found: list[str] = []
    for request in sink.delivered:
        body = request.json
        found.extend(event["messageId"] for event in body["batch"]) if "batch" in body else found.append(body["messageId"])
    return found


def bench_replay(kind: str, events: int, latency: float, concurrency: int) -> dict[str, Any]:
    """Replay ``events`` spooled events to a ``kind`` destination; events/s and requests made."""
    with tempfile.TemporaryDirectory(prefix="pixel-replay-") as folder, Sink() as sink:
        sink.default = Reply(delay=latency)
        tmp = Path(folder)
        if kind == "webhook":
            destination = {"type": "webhook", "url": sink.url + "/hook"}
        else:
            destination = {"type": "rudderstack", "data_plane_url": sink.url, "write_key": "benchmark"}
        config = {
            "sources": [{"name": "web", "write_key": "w"}],
            "destinations": {"target": destination},
            "spool": {"path": str(tmp / "spool.sqlite3")},
        }
        config_path = write_toml(tmp / "pixel.toml", config)
        fill(tmp / "spool.sqlite3", events)
        command = [sys.executable, "-m", "pixel_wsgi", "spool", "replay", "--concurrency", str(concurrency), "--config", str(config_path)]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=600)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"replay failed ({result.returncode}): {result.stdout}{result.stderr}")
        counts = Counter(delivered_ids(sink))
        if len(counts) != events or max(counts.values()) != 1:
            raise RuntimeError(f"{len(counts)} of {events} events arrived, at most {max(counts.values())} times each")
        return {"events_per_s": events / elapsed, "seconds": elapsed, "requests": len(sink.requests), "concurrency": concurrency}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.010, help="seconds the sink takes to answer (default: 0.010)")
    parser.add_argument("--concurrency", type=int, default=32, help="for the webhook replay (default: 32)")
    args = parser.parse_args(argv)
    single = bench_replay("webhook", args.events, args.latency, args.concurrency)
    print(
        f"webhook:     {single['events_per_s']:8,.0f} events/s ({args.events:,} events, {single['requests']:,} requests, concurrency {args.concurrency})"
    )
    default = bench_replay("webhook", args.events // 4, args.latency, 8)
    print(f"webhook:     {default['events_per_s']:8,.0f} events/s ({args.events // 4:,} events, concurrency 8, the default)")
    batch = bench_replay("rudderstack", args.events, args.latency, 8)
    print(
        f"rudderstack: {batch['events_per_s']:8,.0f} events/s ({args.events:,} events, {batch['requests']:,} batch requests, concurrency 8)"
    )
    summary = {
        "replay_events_per_s": round(single["events_per_s"]),
        "replay_concurrency": args.concurrency,
        "replay_default_concurrency_events_per_s": round(default["events_per_s"]),
        "replay_batch_events_per_s": round(batch["events_per_s"]),
        "replay_events": args.events,
        "replay_sink_latency_ms": round(args.latency * 1000, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
