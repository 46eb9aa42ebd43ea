#!/usr/bin/env python3
"""The pixel-wsgi benchmark: how close the pixel app runs to the floor.

    python tests/benchmarks/run.py            # about eight minutes
    python tests/benchmarks/run.py --quick    # under two minutes
    python tests/benchmarks/run.py --pin      # servers on the first CPU, wrk on the last

Load comes from ``wrk`` (Debian package ``wrk``; one thread, 8 connections): a Python
load generator saturates before the server on a small machine and squeezes every
ratio towards 1. The servers are gunicorn (the ``test`` extra) with 2 workers, sync
and gthread (4 threads each). Everything stays on 127.0.0.1 and every load is bounded
in seconds.

Machines are noisy (shared cores, other builds), so the contenders run in many short
rounds, alternating, and each ratio is measured inside a round; the median of those
ratios is what the last line of JSON gives. The contenders, all answering the same
43-byte GIF with the same headers:

- ``floor``: a raw WSGI callable, the least any Python WSGI app can do;
- ``bare``: a bare werkzeug ``Request``/``Response`` app, the reference of every ratio;
- ``null``: pixel-wsgi delivering to a destination that does nothing (``NullDestination``
  below: every event is parsed, validated by marshmallow and dispatched);
- ``sqlite``: pixel-wsgi as ``pixel-wsgi serve`` runs it without a configuration (the
  embedded default: every event stored in SQLite).

The run is invalid (exit status 3, and it says why) unless the floor reaches 1.15x the
bare app under gunicorn sync in the same run: below that, the load generator or the
machine, not the apps, sets the pace and the ratios mean nothing. (gthread is not held
to it: its own per-request work in gunicorn is a larger share of every contender.) On a
small machine wrk's own work per connection can be what squeezes them: ``--pin`` then
keeps wrk on a CPU of its own (``taskset``).

Besides the servers: the webhook destination's cost per event against a raw
``http.client`` POST (``dispatch_ratio``), the time a dead destination with an open
circuit adds to a request, the RSS of a pixel worker after the loads, and how fast
``pixel-wsgi spool replay --concurrency N`` drains 20,000 spooled events to a webhook
and to a batch endpoint that answer in 10 ms (``null`` until the command has the option).

The module is also what gunicorn loads: ``run:floor_app``, ``run:bare_app()``,
``run:null_app()`` and ``run:sqlite_app()``. It is not collected by pytest
(``norecursedirs`` in pyproject.toml).
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:  # run from a checkout without `pip install -e`
    sys.path.insert(0, ROOT)

from werkzeug.wrappers import Request, Response  # noqa: E402

from pixel_wsgi import PixelApp  # noqa: E402
from pixel_wsgi.destinations import Destination, Payload  # noqa: E402
from pixel_wsgi.responses import NO_CACHE_HEADERS, TRANSPARENT_GIF  # noqa: E402

WRITE_KEY = "bench-write-key"
HOST = "127.0.0.1"
# What an email or a shop page sends: a dozen parameters, nested context, a product list.
PAGE_QUERY = (
    f"writeKey={WRITE_KEY}&anonymousId=anon-6f1c2b&name=Pricing&category=Docs"
    "&context.page.path=%2Fpricing&context.page.url=https%3A%2F%2Fexample.com%2Fpricing"
    "&context.page.referrer=https%3A%2F%2Fwww.google.com%2F&context.page.title=Pricing"
    "&context.screen.width=1920&context.screen.height=1080&context.locale=en-US"
    "&properties.section=plans&cb=1700000000123"
)
TRACK_QUERY = (
    f"writeKey={WRITE_KEY}&anonymousId=anon-6f1c2b&userId=user-42&event=Order+Completed"
    "&properties.revenue=19.99&properties.currency=EUR&properties.quantity=2"
    "&properties.products[0].sku=A-1&properties.products[0].price=9.99"
    "&properties.products[1].sku=B-2&properties.products[1].price=10.00"
    "&context.campaign.source=newsletter&context.campaign.medium=email&cb=1700000000456"
)
PAGE_PATH = "/pixel/v1/page"
TRACK_PATH = "/pixel/v1/track"
# Where the gunicorn contenders keep their files (SQLite store, spool): set by the run.
BENCH_DIR_VARIABLE = "PIXEL_WSGI_BENCH_DIR"
CONTENDERS = ("floor", "bare", "null", "sqlite")
TARGETS = {"floor": "run:floor_app", "bare": "run:bare_app()", "null": "run:null_app()", "sqlite": "run:sqlite_app()"}
# Exit status of a run whose figures cannot be trusted.
INVALID = 3
FLOOR_OVER_BARE_MINIMUM = 1.15


# -- the contenders (also gunicorn's targets) ---------------------------------------

_FLOOR_HEADERS = [("Content-Type", "image/gif"), ("Content-Length", str(len(TRANSPARENT_GIF))), *NO_CACHE_HEADERS]


def floor_app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
    """The floor: the GIF and its headers, with no framework at all."""
    start_response("200 OK", _FLOOR_HEADERS)
    return [TRANSPARENT_GIF]


def bare_app() -> Any:
    """The reference: werkzeug's own Request/Response returning the same GIF and headers."""

    @Request.application
    def application(request: Request) -> Response:
        response = Response(TRANSPARENT_GIF, mimetype="image/gif")
        for name, value in NO_CACHE_HEADERS:
            response.headers[name] = value
        return response

    return application


class NullDestination(Destination):
    """Takes every event and keeps nothing: the pixel's own cost, without a store's."""

    kind = "null"

    def deliver(self, payload: Payload) -> None:
        pass


def bench_dir() -> str:
    return os.environ.get(BENCH_DIR_VARIABLE) or tempfile.gettempdir()


def null_app() -> PixelApp:
    """The pixel app delivering every event to ``NullDestination`` (spool never used)."""
    return PixelApp(
        {
            "sources": [{"name": "bench", "write_key": WRITE_KEY}],
            "destinations": {"null": {"type": "run:NullDestination"}},
            "spool": {"path": os.path.join(bench_dir(), "null-spool.sqlite3")},
        }
    )


def sqlite_app() -> PixelApp:
    """The embedded default, exactly as ``pixel-wsgi serve`` builds it without ``--config``."""
    from pixel_wsgi.cli import default_config

    return PixelApp(default_config(WRITE_KEY, os.path.join(bench_dir(), "pixel-events.sqlite3")))


# -- helpers ------------------------------------------------------------------------


def environ_for(path: str, query: str) -> Dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": HOST,
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": HOST,
        "HTTP_HOST": HOST,
        "HTTP_USER_AGENT": "Mozilla/5.0 (pixel-wsgi benchmark)",
        "wsgi.url_scheme": "http",
        "wsgi.input": None,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def _start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
    if status[:3] != "200":
        raise RuntimeError(f"benchmark request answered {status}")
    return lambda data: None


def call_many(app: Any, environ: Dict[str, Any], count: int) -> float:
    """Seconds for ``count`` WSGI calls, each with a fresh copy of the environ."""
    start_response = _start_response
    started = time.perf_counter()
    for _ in range(count):
        body = app(dict(environ), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return time.perf_counter() - started


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, deadline: float, process: subprocess.Popen[bytes] | None = None) -> None:
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def children_of(pid: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


# -- 1. in-process ------------------------------------------------------------------


def bench_inprocess(rounds: int, count: int) -> Dict[str, Any]:
    """Page and track events/s through the WSGI app (null destination) vs the bare app."""
    pixel = null_app()
    bare = bare_app()
    page = environ_for(PAGE_PATH, PAGE_QUERY)
    track = environ_for(TRACK_PATH, TRACK_QUERY)
    for app in (pixel, bare):  # warm caches and imports
        call_many(app, page, 200)
        call_many(app, track, 200)
    ratios, page_rates, track_rates, bare_rates = [], [], [], []
    for round_number in range(rounds):
        # Alternate who goes first so that drift within a round cancels.
        order = ("pixel", "bare") if round_number % 2 == 0 else ("bare", "pixel")
        timings: Dict[str, float] = {}
        for who in order:
            if who == "pixel":
                timings["page"] = call_many(pixel, page, count)
                timings["track"] = call_many(pixel, track, count)
            else:
                timings["bare"] = call_many(bare, page, count) + call_many(bare, track, count)
        pixel_rate = 2 * count / (timings["page"] + timings["track"])
        bare_rate = 2 * count / timings["bare"]
        ratios.append(pixel_rate / bare_rate)
        page_rates.append(count / timings["page"])
        track_rates.append(count / timings["track"])
        bare_rates.append(bare_rate)
    pixel.close()
    return {
        "ratio": median(ratios),
        # Half page, half track: the harmonic mean of the two medians, as in the table.
        "events_per_s": 2 / (1 / median(page_rates) + 1 / median(track_rates)),
        "page_per_s": median(page_rates),
        "track_per_s": median(track_rates),
        "bare_per_s": median(bare_rates),
    }


# -- 2. gunicorn under wrk ----------------------------------------------------------

WORKERS = 2
THREADS = 4
CONNECTIONS = 8


# --pin: the servers (master and workers) on the first CPU, wrk on the last one.
SERVER_CPU = "0"


def load_generator_cpu() -> str:
    return str(max(os.sched_getaffinity(0)))


class Gunicorn:
    """One gunicorn master on a free loopback port, stopped by its own pid."""

    def __init__(self, target: str, worker_class: str, directory: str, *, pin: bool = False) -> None:
        self.port = free_port()
        command = [
            *(["taskset", "-c", SERVER_CPU] if pin else []),
            sys.executable, "-m", "gunicorn", target,
            "--pythonpath", f"{HERE},{ROOT}",
            "--bind", f"{HOST}:{self.port}",
            "--workers", str(WORKERS),
            "--worker-class", worker_class,
            "--log-level", "warning",
            "--keep-alive", "5",
            "--backlog", "256",
        ]  # fmt: skip
        if worker_class == "gthread":
            # Each worker listens on its own socket and the kernel spreads the
            # connections between them. With one shared socket, whichever gthread worker
            # wakes first accepts most of wrk's 8 keep-alive connections and keeps them
            # for the whole load: the same server measured 5,600 or 2,200 req/s from one
            # round to the next, by that draw alone. (A sync worker serves one request
            # per connection, so a shared socket balances it better.)
            command += ["--threads", str(THREADS), "--reuse-port"]
        # A file, not a pipe: nobody reads it during the load, and a full pipe blocks gunicorn.
        self.log = tempfile.TemporaryFile()
        environment = {**os.environ, BENCH_DIR_VARIABLE: directory}
        environment.pop("PIXEL_WSGI_CONFIG", None)
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log, env=environment)

    def wait(self) -> None:
        deadline = time.monotonic() + 30
        try:
            wait_for_port(self.port, deadline, self.process)
        except RuntimeError:
            raise RuntimeError(f"gunicorn did not start: {self.errors()}") from None
        while len(children_of(self.process.pid)) < WORKERS and time.monotonic() < deadline:
            time.sleep(0.05)

    def errors(self) -> str:
        self.log.seek(0)
        return self.log.read()[-2000:].decode(errors="replace")

    def worker_pids(self) -> List[int]:
        return children_of(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


# Page and track alternate inside each load; done() prints wrk's own latency
# distribution (microseconds) as one JSON line.
WRK_SCRIPT = """
local paths = {"%(page)s", "%(track)s"}
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[counter %% 2 + 1])
end
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK-JSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "non_2xx": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.status, errors.connect + errors.read + errors.write + errors.timeout))
end
"""


def write_wrk_script(directory: str) -> str:
    path = os.path.join(directory, "mix.lua")
    with open(path, "w") as handle:
        handle.write(WRK_SCRIPT % {"page": f"{PAGE_PATH}?{PAGE_QUERY}", "track": f"{TRACK_PATH}?{TRACK_QUERY}"})
    return path


def load_wrk(port: int, seconds: float, script: str, *, pin: bool = False) -> Dict[str, float]:
    """One wrk load: requests/s, p50 and p99 in milliseconds."""
    completed = subprocess.run(
        [
            *(["taskset", "-c", load_generator_cpu()] if pin else []),
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            script,
            f"http://{HOST}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    )
    line = next((line for line in completed.stdout.splitlines() if line.startswith("WRK-JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {completed.stdout[-500:]} {completed.stderr[-500:]}")
    figures = json.loads(line[len("WRK-JSON ") :])
    # Sync workers close the connection after each response (wrk reconnects): those
    # are not errors. Any non-2xx answer, or a timeout, spoils the load.
    if figures["non_2xx"]:
        raise RuntimeError(f"wrk saw {figures['non_2xx']} non-2xx responses on port {port}")
    return {
        "rps": figures["requests"] / (figures["duration_us"] / 1e6),
        "p50": figures["p50_us"] / 1000,
        "p99": figures["p99_us"] / 1000,
    }


def bench_gunicorn(worker_class: str, rounds: int, seconds: float, directory: str, *, pin: bool = False) -> Dict[str, Any]:
    """The four contenders under one worker class, each round a load on each, in rotation."""
    script = write_wrk_script(directory)
    servers = {who: Gunicorn(TARGETS[who], worker_class, directory, pin=pin) for who in CONTENDERS}
    try:
        for server in servers.values():
            server.wait()
        for server in servers.values():  # first requests fill caches and build schemas
            load_wrk(server.port, 1, script, pin=pin)
        results: Dict[str, List[Dict[str, float]]] = {who: [] for who in CONTENDERS}
        for round_number in range(rounds):
            # Rotate who goes first, and reverse every other round: each contender
            # meets each position, so slow drift of the machine cancels out.
            shift = round_number % len(CONTENDERS)
            order = CONTENDERS[shift:] + CONTENDERS[:shift]
            if round_number % 2:
                order = tuple(reversed(order))
            for who in order:
                results[who].append(load_wrk(servers[who].port, seconds, script, pin=pin))
        rss = {who: max(rss_mb(pid) for pid in servers[who].worker_pids()) for who in CONTENDERS}
    except Exception:
        for who, server in servers.items():
            if server.process.poll() is not None:
                print(f"gunicorn {who} ({worker_class}) ended: {server.errors()}", file=sys.stderr)
        raise
    finally:
        for server in servers.values():
            server.stop()

    def ratio(who: str, key: str = "rps") -> float:
        return median(mine[key] / bare[key] for mine, bare in zip(results[who], results["bare"]))

    return {
        "floor_ratio": ratio("floor"),
        "null_ratio": ratio("null"),
        "sqlite_ratio": ratio("sqlite"),
        "null_p99_ratio": ratio("null", "p99"),
        "sqlite_p99_ratio": ratio("sqlite", "p99"),
        "figures": {who: {key: median(r[key] for r in results[who]) for key in ("rps", "p50", "p99")} for who in CONTENDERS},
        "rss_mb": rss,
    }


# -- 3, 4 and 6. delivery --------------------------------------------------------------

_SINK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"


def serve_sink(port_file: str, delay: float = 0.0) -> None:
    """A keep-alive HTTP sink as lean as a socket loop gets: it answers every request 200,
    after ``delay`` seconds (a thread per connection, so concurrent requests wait together).

    Runs in its own process (``run.py --sink``) so that its work never competes with
    the measured client for the GIL; it ends when its parent does.
    """
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(256)
    with open(port_file + ".tmp", "w") as handle:
        handle.write(str(listener.getsockname()[1]))
    os.replace(port_file + ".tmp", port_file)
    parent = os.getppid()

    def connection(conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end == -1:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                    continue
                head = buffer[:end].lower()
                marker = head.find(b"content-length:")
                length = int(head[marker + 15 :].split(b"\r\n", 1)[0]) if marker != -1 else 0
                while len(buffer) < end + 4 + length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                buffer = buffer[end + 4 + length :]
                if delay:
                    time.sleep(delay)
                conn.sendall(_SINK_ANSWER)

    listener.settimeout(1.0)
    while os.getppid() == parent:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=connection, args=(conn,), daemon=True).start()


class Sink:
    """``serve_sink`` in a child process, for a ``with`` block."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def __enter__(self) -> Sink:
        self.directory = tempfile.TemporaryDirectory(prefix="pixel-bench-")
        port_file = os.path.join(self.directory.name, "port")
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--sink", port_file, "--sink-delay", str(self.delay)])
        deadline = time.monotonic() + 10
        while not os.path.exists(port_file):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the HTTP sink did not start")
            time.sleep(0.02)
        with open(port_file) as handle:
            self.port = int(handle.read())
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.directory.cleanup()


def delivery_available() -> str | None:
    """``None`` when the webhook destination and the circuit breaker exist, else why not."""
    if importlib.util.find_spec("pixel_wsgi.destinations.webhook") is None:
        return "no webhook destination in this checkout (pixel_wsgi.destinations.webhook)"
    import pixel_wsgi.dispatch as dispatch

    if not hasattr(dispatch, "CircuitBreaker"):
        return "no circuit breaker in this checkout (pixel_wsgi.dispatch.CircuitBreaker)"
    return None


def sample_event() -> Dict[str, Any]:
    from pixel_wsgi.testing import memory_app

    app, events = memory_app(WRITE_KEY)
    call_many(app, environ_for(TRACK_PATH, TRACK_QUERY), 1)
    app.close()
    return events[0]


def bench_dispatch(rounds: int, count: int) -> Dict[str, Any]:
    """Per event: the webhook destination through the dispatcher vs ``http.client``."""
    reason = delivery_available()
    if reason:
        return {"ratio": None, "note": reason}
    import urllib3

    event = sample_event()
    body = Payload(event, "bench").body
    with Sink() as sink, tempfile.TemporaryDirectory(prefix="pixel-bench-") as directory:
        url = f"http://{HOST}:{sink.port}/hook"
        config = {
            "sources": [{"name": "bench", "write_key": WRITE_KEY}],
            "destinations": {"hook": {"type": "webhook", "url": url}},
            "spool": {"path": os.path.join(directory, "spool.sqlite3")},
        }
        app = PixelApp(config)
        dispatcher = app.dispatcher
        names = ("hook",)
        raw = http.client.HTTPConnection(HOST, sink.port)
        # The same request bytes as the webhook's: same headers, same body.
        raw_headers = {**app.destination("hook").headers, "Content-Length": str(len(body))}
        pool = urllib3.HTTPConnectionPool(HOST, sink.port, maxsize=1, retries=False)

        def webhook_once() -> None:
            if not dispatcher.dispatch(Payload(event, "bench", body), names):
                raise RuntimeError("the webhook did not deliver to the sink")

        def raw_once() -> None:
            raw.request("POST", "/hook", body, raw_headers)
            response = raw.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"sink answered {response.status}")

        def urllib3_once() -> None:
            response = pool.urlopen("POST", "/hook", body=body, headers=raw_headers, retries=False)
            if response.status != 200:
                raise RuntimeError(f"sink answered {response.status}")

        # requests' own lean path, for reference: a Session per thread, trust_env off, a
        # prepared request sent again and again (what the destination did before it
        # went to the adapter's urllib3 pool directly).
        import requests

        session = requests.Session()
        session.trust_env = False
        template = requests.Request("POST", url, data=body, headers=raw_headers).prepare()

        def session_once() -> None:
            response = session.send(template, timeout=5, allow_redirects=False)
            if response.status_code != 200:
                raise RuntimeError(f"sink answered {response.status_code}")

        contenders = {"webhook": webhook_once, "raw": raw_once, "urllib3": urllib3_once, "session": session_once}
        for once in contenders.values():  # connect and warm up
            for _ in range(50):
                once()
        costs: Dict[str, List[float]] = {name: [] for name in contenders}
        ratios: List[float] = []
        for round_number in range(rounds):
            order = list(contenders) if round_number % 2 == 0 else list(reversed(contenders))
            seconds: Dict[str, float] = {}
            for name in order:
                once = contenders[name]
                started = time.perf_counter()
                for _ in range(count):
                    once()
                seconds[name] = (time.perf_counter() - started) / count
                costs[name].append(seconds[name] * 1e6)
            ratios.append(seconds["webhook"] / seconds["raw"])
        raw.close()
        pool.close()
        session.close()
        app.close()
    return {
        "ratio": median(ratios),
        "webhook_us": median(costs["webhook"]),
        "raw_us": median(costs["raw"]),
        "urllib3_us": median(costs["urllib3"]),
        "urllib3_ratio": median(costs["urllib3"]) / median(costs["raw"]),
        "session_us": median(costs["session"]),
        "session_ratio": median(costs["session"]) / median(costs["raw"]),
    }


def bench_dead_destination(rounds: int, count: int) -> Dict[str, Any]:
    """Milliseconds a dead webhook (circuit open, events spooled) adds to a pixel request."""
    reason = delivery_available()
    if reason:
        return {"added_ms": None, "note": reason}
    dead_port = free_port()  # nothing listens there: connection refused
    with tempfile.TemporaryDirectory(prefix="pixel-bench-") as directory:
        config = {
            "sources": [{"name": "bench", "write_key": WRITE_KEY}],
            "destinations": {"dead": {"type": "webhook", "url": f"http://{HOST}:{dead_port}/hook", "timeout": 0.5, "retries": 0}},
            "spool": {"path": os.path.join(directory, "spool.sqlite3")},
            # No probe during the measurement: the circuit stays open.
            "dispatch": {"breaker_failures": 3, "breaker_cooldown": 3600},
        }
        dead = PixelApp(config)
        alive = null_app()
        track = environ_for(TRACK_PATH, TRACK_QUERY)
        page = environ_for(PAGE_PATH, PAGE_QUERY)
        for _ in range(config["dispatch"]["breaker_failures"]):  # type: ignore[index]
            call_many(dead, track, 1)
        if not dead.dispatcher.breakers["dead"].is_open:
            return {"added_ms": None, "note": "the circuit did not open after the configured failures"}
        call_many(dead, track, 20)
        call_many(alive, track, 20)
        added: List[float] = []
        for round_number in range(rounds):
            order = ("dead", "alive") if round_number % 2 == 0 else ("alive", "dead")
            seconds: Dict[str, float] = {}
            for who in order:
                app = dead if who == "dead" else alive
                seconds[who] = (call_many(app, track, count) + call_many(app, page, count)) / (2 * count)
            added.append((seconds["dead"] - seconds["alive"]) * 1000)
        spooled = dead.spool.counts() if hasattr(dead.spool, "counts") else None
        dead.close()
        alive.close()
    return {"added_ms": max(0.0, median(added)), "spooled": spooled}


# -- 6. replay of the spool ---------------------------------------------------------

REPLAY_SINK_DELAY = 0.010


def pixel_wsgi_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    environment.pop("PIXEL_WSGI_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "pixel_wsgi", *args], capture_output=True, text=True, timeout=timeout, env=environment, cwd=ROOT
    )


def bench_replay(kind: str, events: int, concurrency: int) -> Dict[str, Any]:
    """Events/s of ``pixel-wsgi spool replay --concurrency N`` over ``events`` spooled events.

    ``kind`` is ``webhook`` (one POST per event) or ``batch`` (rudderstack with
    ``batch_size``, posting to ``/v1/batch``); the sink answers each request after
    10 ms. The time is the command's whole run, start-up included.
    """
    from pixel_wsgi.spool import Spool
    from tests.support.processes import write_toml

    usage = pixel_wsgi_command("spool", "replay", "--help").stdout
    if "--concurrency" not in usage:
        return {"events_per_s": None, "note": "`pixel-wsgi spool replay` has no --concurrency option in this checkout"}
    with Sink(delay=REPLAY_SINK_DELAY) as sink, tempfile.TemporaryDirectory(prefix="pixel-bench-") as directory:
        if kind == "webhook":
            options: Dict[str, Any] = {"type": "webhook", "url": f"http://{HOST}:{sink.port}/hook"}
        else:
            options = {"type": "rudderstack", "data_plane_url": f"http://{HOST}:{sink.port}", "write_key": "bench", "batch_size": 100}
        spool_path = os.path.join(directory, "spool.sqlite3")
        config = write_toml(
            Path(directory) / "config.toml",
            {"sources": [{"name": "bench", "write_key": WRITE_KEY}], "destinations": {"out": options}, "spool": {"path": spool_path}},
        )
        checked = pixel_wsgi_command("check-config", str(config))
        if checked.returncode != 0:
            reason = (checked.stdout + checked.stderr).strip().splitlines()
            return {
                "events_per_s": None,
                "note": f"this checkout refuses the configuration: {reason[-1] if reason else checked.returncode}",
            }
        event = sample_event()
        spool = Spool(spool_path)
        due = time.time() - 1
        for number in range(events):
            event["messageId"] = f"bench-replay-{number}"
            body = Payload(event, "bench").body
            spool.add("out", event["messageId"], "bench", body, attempts=1, error="benchmark: spooled", next_attempt_at=due)
        spool.close()
        started = time.monotonic()
        try:
            completed = pixel_wsgi_command("spool", "replay", "--config", str(config), "--concurrency", str(concurrency), timeout=180)
        except subprocess.TimeoutExpired:
            return {"events_per_s": None, "note": "spool replay did not finish in 180 s"}
        elapsed = time.monotonic() - started
        spool = Spool(spool_path)
        left = sum(waiting + dead for waiting, dead in spool.counts().values())
        spool.close()
    if completed.returncode != 0 or left:
        output = (completed.stdout + completed.stderr).strip().splitlines()
        return {"events_per_s": None, "note": f"replay left {left} events (exit {completed.returncode}): {output[-1] if output else ''}"}
    return {"events_per_s": events / elapsed, "seconds": elapsed}


# -- report -------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} CPUs, {model}, load average {load:.2f}, Python {platform.python_version()}, {platform.system()}"


def versions() -> str:
    from importlib.metadata import version

    names = ("werkzeug", "marshmallow", "gunicorn", "urllib3", "requests")
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split(" [")[0]
    return ", ".join(f"{name} {version(name)}" for name in names) + f", sqlite {sqlite_version()}, {wrk}"


def sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter loads, fewer spooled events: under two minutes")
    parser.add_argument("--skip-replay", action="store_true", help="leave out the spool replay rows")
    parser.add_argument(
        "--worker-class", choices=("sync", "gthread", "both"), default="both", help="gunicorn worker classes to measure (default: both)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run the gunicorn servers on the first CPU and wrk on the last (taskset): the load generator then takes no CPU from the servers",
    )
    parser.add_argument("--replay-concurrency", type=int, default=16, metavar="N", help="spool replay --concurrency (default: %(default)s)")
    parser.add_argument("--sink", metavar="PORT_FILE", help=argparse.SUPPRESS)  # the HTTP sink's own process
    parser.add_argument("--sink-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.sink:
        serve_sink(options.sink, options.sink_delay)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package `wrk`): the benchmark needs it", file=sys.stderr)
        return 2
    if options.pin and (shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2):
        print("--pin needs taskset (util-linux) and at least two CPUs", file=sys.stderr)
        return 2
    if importlib.util.find_spec("gunicorn") is None:
        print("gunicorn is not installed (`pip install -e '.[test]'`): the benchmark needs it", file=sys.stderr)
        return 2

    # Row 4 makes the dispatcher warn about a dead destination on purpose.
    logging.getLogger("pixel_wsgi").setLevel(logging.ERROR)
    quick = options.quick
    # Many short rounds rather than a few long ones: a burst of someone else's work
    # then spoils one round's ratio, which the median drops, instead of one contender.
    rounds = 40 if quick else 120
    inproc_count = 150
    dispatch_count = 20
    gunicorn_rounds = 5 if quick else 12
    gunicorn_seconds = 1.0 if quick else 2.0
    replay_events = 5_000 if quick else 20_000

    print(f"pixel-wsgi benchmark on {machine()}")
    print(versions())
    print(
        f"wrk -t1 -c{CONNECTIONS}, gunicorn {WORKERS} workers (gthread: {THREADS} threads each), "
        f"{gunicorn_rounds} rounds of {gunicorn_seconds:g} s per contender; {'quick' if quick else 'full'} run"
        + (f"; servers pinned to CPU {SERVER_CPU}, wrk to CPU {load_generator_cpu()}" if options.pin else "")
    )
    print()
    inproc = bench_inprocess(rounds, inproc_count)
    rows: List[Tuple[str, str, str, str]] = [
        ("in-process page (null destination)", f"{inproc['page_per_s']:,.0f} ev/s", "", ""),
        ("in-process track (null destination)", f"{inproc['track_per_s']:,.0f} ev/s", "", ""),
        ("in-process bare werkzeug", f"{inproc['bare_per_s']:,.0f} req/s", "", ""),
        ("in-process ratio", f"{inproc['ratio']:.3f}", "", ""),
    ]
    gunicorn: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pixel-bench-") as directory:
        for worker_class in ("sync", "gthread") if options.worker_class == "both" else (options.worker_class,):
            result = gunicorn[worker_class] = bench_gunicorn(worker_class, gunicorn_rounds, gunicorn_seconds, directory, pin=options.pin)
            label = "sync x2" if worker_class == "sync" else f"gthread x2x{THREADS}"
            for who in CONTENDERS:
                figures = result["figures"][who]
                rows.append(
                    (f"gunicorn {label}: {who}", f"{figures['rps']:,.0f} req/s",
                     f"p50 {figures['p50']:.2f} ms", f"p99 {figures['p99']:.2f} ms")
                )  # fmt: skip
            rows.append((f"gunicorn {label}: floor / bare", f"{result['floor_ratio']:.3f}", "", "valid run: sync >= 1.15"))
            rows.append((f"gunicorn {label}: null / bare", f"{result['null_ratio']:.3f}", "", "target >= 0.85"))
            rows.append((f"gunicorn {label}: sqlite / bare", f"{result['sqlite_ratio']:.3f}", "", "target >= 0.70"))
            rows.append((f"gunicorn {label}: p99 null / bare", f"{result['null_p99_ratio']:.2f}", "", "target <= 1.5 (gthread)"))
    dispatch = bench_dispatch(rounds, dispatch_count)
    if dispatch["ratio"] is None:
        rows.append(("webhook dispatch ratio", "n/a", "", dispatch["note"]))
    else:
        rows.append(("webhook per event", f"{dispatch['webhook_us']:.0f} us", "", ""))
        rows.append(("raw http.client POST", f"{dispatch['raw_us']:.0f} us", "", ""))
        for key, label in (("urllib3", "urllib3 pool POST"), ("session", "requests Session.send")):
            cost, ratio = dispatch[f"{key}_us"], dispatch[f"{key}_ratio"]
            rows.append((f"{label} (reference)", f"{cost:.0f} us", f"x{ratio:.2f}", ""))
        rows.append(("webhook dispatch ratio", f"{dispatch['ratio']:.2f}", "", "target <= 1.6"))
    dead = bench_dead_destination(rounds, 2 * dispatch_count)
    if dead["added_ms"] is None:
        rows.append(("dead destination, open circuit", "n/a", "", dead["note"]))
    else:
        rows.append(("dead destination, open circuit", f"+{dead['added_ms']:.3f} ms", "", "target <= 1"))
    # The largest pixel worker after the loads (gthread workers carry their threads).
    worker_rss = max(result["rss_mb"][who] for result in gunicorn.values() for who in ("null", "sqlite"))
    bare_rss = max(result["rss_mb"]["bare"] for result in gunicorn.values())
    rows.append(("RSS of the largest pixel worker", f"{worker_rss:.1f} MB", f"bare {bare_rss:.1f} MB", "target <= 50"))
    replay: Dict[str, Dict[str, Any]] = {}
    for kind in ("webhook", "batch"):
        if options.skip_replay:
            replay[kind] = {"events_per_s": None, "note": "--skip-replay"}
        else:
            replay[kind] = bench_replay(kind, replay_events, options.replay_concurrency)
        label = f"spool replay, {kind}, {replay_events:,} events, 10 ms sink"
        if replay[kind]["events_per_s"] is None:
            rows.append((label, "n/a", "", replay[kind]["note"]))
        else:
            target = "target >= 1,000" if kind == "webhook" else "target >= 5,000"
            rows.append((label, f"{replay[kind]['events_per_s']:,.0f} ev/s", f"{replay[kind]['seconds']:.1f} s", target))

    width = max(len(row[0]) for row in rows)
    for name, *values in rows:
        print(f"{name:<{width}}  {values[0]:>14}  {values[1]:>14}  {values[2]}".rstrip())
    print()
    missing = {"floor_ratio": None, "null_ratio": None, "sqlite_ratio": None, "null_p99_ratio": None, "sqlite_p99_ratio": None}
    sync, gthread = gunicorn.get("sync", missing), gunicorn.get("gthread", missing)
    summary = {
        "valid": sync["floor_ratio"] is not None and sync["floor_ratio"] >= FLOOR_OVER_BARE_MINIMUM,
        "floor_sync_ratio": rounded(sync["floor_ratio"], 3),
        "floor_gthread_ratio": rounded(gthread["floor_ratio"], 3),
        "gunicorn_sync_ratio": rounded(sync["null_ratio"], 3),
        "gunicorn_gthread_ratio": rounded(gthread["null_ratio"], 3),
        "sqlite_sync_ratio": rounded(sync["sqlite_ratio"], 3),
        "sqlite_gthread_ratio": rounded(gthread["sqlite_ratio"], 3),
        "gthread_p99_ratio": rounded(gthread["null_p99_ratio"], 2),
        "sqlite_gthread_p99_ratio": rounded(gthread["sqlite_p99_ratio"], 2),
        "inproc_ratio": rounded(inproc["ratio"], 3),
        "events_per_s": round(inproc["events_per_s"]),
        "dispatch_ratio": rounded(dispatch["ratio"], 2),
        "dead_destination_ms": rounded(dead["added_ms"], 3),
        "rss_mb": rounded(worker_rss, 1),
        "replay_events_per_s": rounded(replay["webhook"]["events_per_s"], 0),
        "replay_batch_events_per_s": rounded(replay["batch"]["events_per_s"], 0),
        "replay_concurrency": options.replay_concurrency,
        "replay_events": replay_events,
        "quick": quick,
        "pinned": options.pin,
    }
    if sync["floor_ratio"] is None:
        print("INVALID RUN: gunicorn sync was not measured, so the floor check could not run", file=sys.stderr)
    elif not summary["valid"]:
        print(
            f"INVALID RUN: under gunicorn sync the floor app reached only {sync['floor_ratio']:.2f}x the bare werkzeug app"
            f" (at least {FLOOR_OVER_BARE_MINIMUM}x needed): the load generator or the machine set the pace, not the apps",
            file=sys.stderr,
        )
    print(json.dumps(summary))
    return 0 if summary["valid"] else INVALID


if __name__ == "__main__":
    sys.exit(main())
