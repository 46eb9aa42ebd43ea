#!/usr/bin/env python3
"""The pixel-wsgi benchmark: how close the pixel app runs to the floor.

    python tests/benchmarks/run.py            # about five minutes
    python tests/benchmarks/run.py --quick    # under a minute

It needs only the standard library and the project's own dependencies (gunicorn from
the ``test`` extra for the server rows), plus ``wrk`` when it is on the PATH; without
it a small Python load generator on keep-alive connections does the job. Every load
is bounded in requests and seconds and stays on 127.0.0.1.

Machines are noisy (shared cores, other builds), so each measurement alternates its
contenders round by round and reports the *ratio* measured inside each round; the
median of those ratios is what the last line of JSON gives:

1. in-process: page and track events/s through the WSGI app (memory destination)
   against a bare werkzeug app that returns the same GIF;
2. gunicorn sync ×2 and gthread ×2 (``--reuse-port``: one listening socket per worker,
   so wrk's persistent connections cannot all land on one worker) on loopback:
   requests/s, p50 and p99, pixel app against the same bare app;
3. the webhook destination's cost per event (through the dispatcher) against a raw
   ``http.client`` keep-alive POST of the same request to the same local keep-alive
   sink; a bare urllib3 pool and requests' ``Session.send`` with a prepared request
   are measured beside them for reference;
4. a dead destination whose circuit is open: milliseconds added to each pixel request;
5. RSS of one gunicorn worker of the pixel app after the load (the largest, sync or gthread).

The module is also what gunicorn loads: ``run:pixel_app()`` and ``run:bare_app()``.
It is not collected by pytest (``norecursedirs`` in pyproject.toml).
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from typing import Any, Callable, Dict, Iterable, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:  # run from a checkout without `pip install -e`
    sys.path.insert(0, ROOT)

from werkzeug.wrappers import Request, Response  # noqa: E402

from pixel_wsgi.responses import NO_CACHE_HEADERS, TRANSPARENT_GIF  # noqa: E402
from pixel_wsgi.testing import memory_app  # noqa: E402

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
# The memory destination keeps every event; the benchmark keeps the last few so that
# RSS measures the app, not a list of a hundred thousand events.
KEPT_EVENTS = 1000


# -- the contenders (also gunicorn's targets) ---------------------------------------


def pixel_app() -> Any:
    """The pixel app with a memory destination that keeps the last ``KEPT_EVENTS``."""
    # The memory destination never fails, so the spool is never opened; a temp path
    # keeps a stray file out of the checkout anyway.
    spool = os.path.join(tempfile.gettempdir(), "pixel-wsgi-bench-spool.sqlite3")
    app, _ = memory_app(WRITE_KEY, spool={"path": spool})
    app.destination("memory").events = deque(maxlen=KEPT_EVENTS)
    return app


def bare_app() -> Any:
    """The floor: werkzeug's own Request/Response returning the same GIF and headers."""

    @Request.application
    def application(request: Request) -> Response:
        response = Response(TRANSPARENT_GIF, mimetype="image/gif")
        for name, value in NO_CACHE_HEADERS:
            response.headers[name] = value
        return response

    return application


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
    pixel = pixel_app()
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
    return {
        "ratio": median(ratios),
        # Half page, half track: the harmonic mean of the two medians, as in the table.
        "events_per_s": 2 / (1 / median(page_rates) + 1 / median(track_rates)),
        "page_per_s": median(page_rates),
        "track_per_s": median(track_rates),
        "bare_per_s": median(bare_rates),
    }


# -- 2 and 5. gunicorn --------------------------------------------------------------


class Gunicorn:
    """One gunicorn master on a free loopback port, stopped by its own pid."""

    def __init__(self, target: str, worker_class: str, workers: int, threads: int) -> None:
        self.port = free_port()
        command = [
            sys.executable, "-m", "gunicorn", target,
            "--pythonpath", f"{HERE},{ROOT}",
            "--bind", f"{HOST}:{self.port}",
            "--workers", str(workers),
            "--worker-class", worker_class,
            "--log-level", "warning",
            "--keep-alive", "5",
        ]  # fmt: skip
        if worker_class == "gthread":
            command += ["--threads", str(threads), "--reuse-port"]
        # A file, not a pipe: nobody reads it during the load, and a full pipe blocks gunicorn.
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log)
        self.workers = workers

    def wait(self) -> None:
        deadline = time.monotonic() + 20
        try:
            wait_for_port(self.port, deadline, self.process)
        except RuntimeError:
            self.log.seek(0)
            raise RuntimeError(f"gunicorn did not start: {self.log.read()[-2000:].decode(errors='replace')}") from None
        while len(children_of(self.process.pid)) < self.workers and time.monotonic() < deadline:
            time.sleep(0.05)

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


_WRK_LINE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def load_wrk(url: str, seconds: float, connections: int) -> Dict[str, float]:
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    latency = {percent: float(value) * _WRK_UNITS[unit] for percent, value, unit in _WRK_LINE.findall(output)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} non-2xx responses from {url}")
    return {"rps": rps, "p50": latency.get("50", float("nan")), "p99": latency.get("99", float("nan"))}


def load_python(url: str, seconds: float, connections: int, max_requests: int = 200_000) -> Dict[str, float]:
    """wrk's job with threads and ``http.client`` keep-alive connections (slower, fair)."""
    target = url.split("://", 1)[1]
    hostport, _, path = target.partition("/")
    host, _, port = hostport.partition(":")
    path = "/" + path
    deadline = time.monotonic() + seconds
    latencies: List[float] = []
    failures: List[str] = []
    lock = threading.Lock()
    budget = [max_requests]

    def worker() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        mine: List[float] = []
        try:
            while time.monotonic() < deadline:
                with lock:
                    if budget[0] <= 0:
                        break
                    budget[0] -= 1
                started = time.perf_counter()
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                mine.append(time.perf_counter() - started)
                if response.status != 200:
                    failures.append(str(response.status))
                    break
        except OSError as exc:
            failures.append(repr(exc))
        finally:
            connection.close()
            with lock:
                latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if failures:
        raise RuntimeError(f"load on {url} failed: {failures[0]}")
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def bench_gunicorn(worker_class: str, rounds: int, seconds: float, use_wrk: bool) -> Dict[str, Any]:
    workers, threads = 2, 4
    # Two connections per thread: with SO_REUSEPORT the kernel spreads connections over
    # the workers' sockets by hash, and more connections split more evenly.
    connections = workers * (2 * threads if worker_class == "gthread" else 2)
    servers = {
        "pixel": Gunicorn("run:pixel_app()", worker_class, workers, threads),
        "bare": Gunicorn("run:bare_app()", worker_class, workers, threads),
    }
    load = load_wrk if use_wrk else load_python
    try:
        for server in servers.values():
            server.wait()
        for server in servers.values():  # first requests fill caches and build schemas
            for path, query in ((PAGE_PATH, PAGE_QUERY), (TRACK_PATH, TRACK_QUERY)):
                load(f"http://{HOST}:{server.port}{path}?{query}", 1, connections)
        results: Dict[str, List[Dict[str, float]]] = {"pixel": [], "bare": []}
        for round_number in range(rounds):
            order = ("pixel", "bare") if round_number % 2 == 0 else ("bare", "pixel")
            for who in order:
                # Page and track alternate too: half of each load is one, half the other.
                for path, query in ((PAGE_PATH, PAGE_QUERY), (TRACK_PATH, TRACK_QUERY)):
                    url = f"http://{HOST}:{servers[who].port}{path}?{query}"
                    results[who].append(load(url, seconds / 2, connections))
        pairs = list(zip(results["pixel"], results["bare"]))
        worker_rss = max(rss_mb(pid) for pid in servers["pixel"].worker_pids())
        bare_rss = max(rss_mb(pid) for pid in servers["bare"].worker_pids())
    finally:
        for server in servers.values():
            server.stop()
    return {
        "ratio": median(p["rps"] / b["rps"] for p, b in pairs),
        "pixel": {key: median(r[key] for r in results["pixel"]) for key in ("rps", "p50", "p99")},
        "bare": {key: median(r[key] for r in results["bare"]) for key in ("rps", "p50", "p99")},
        "rss_mb": worker_rss,
        "bare_rss_mb": bare_rss,
    }


# -- 3 and 4. delivery --------------------------------------------------------------

_SINK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"


def serve_sink(port_file: str) -> None:
    """A keep-alive HTTP sink as lean as a socket loop gets: it answers every request 200.

    Runs in its own process (``run.py --sink``) so that its work never competes with
    the measured client for the GIL; it ends when its parent does.
    """
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(64)
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
    def __enter__(self) -> Sink:
        self.directory = tempfile.TemporaryDirectory(prefix="pixel-bench-")
        port_file = os.path.join(self.directory.name, "port")
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--sink", port_file])
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

    from pixel_wsgi.destinations import Payload

    event = sample_event()
    body = Payload(event, "bench").body
    with Sink() as sink, tempfile.TemporaryDirectory(prefix="pixel-bench-") as directory:
        url = f"http://{HOST}:{sink.port}/hook"
        config = {
            "sources": [{"name": "bench", "write_key": WRITE_KEY}],
            "destinations": {"hook": {"type": "webhook", "url": url}},
            "spool": {"path": os.path.join(directory, "spool.sqlite3")},
        }
        from pixel_wsgi import PixelApp

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
    from pixel_wsgi import PixelApp

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
        alive = pixel_app()
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
    return f"{os.cpu_count()} CPUs, {model}, Python {platform.python_version()}, {platform.system()}"


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter loads: under a minute")
    parser.add_argument("--no-wrk", action="store_true", help="use the Python load generator even if wrk is installed")
    parser.add_argument("--skip-gunicorn", action="store_true", help="only the in-process and delivery rows")
    parser.add_argument("--sink", metavar="PORT_FILE", help=argparse.SUPPRESS)  # the HTTP sink's own process
    options = parser.parse_args(argv)
    if options.sink:
        serve_sink(options.sink)
        return 0

    # Row 4 makes the dispatcher warn about a dead destination on purpose.
    logging.getLogger("pixel_wsgi").setLevel(logging.ERROR)
    quick = options.quick
    # Many short rounds rather than a few long ones: a burst of someone else's work
    # then spoils one round's ratio, which the median drops, instead of one contender.
    rounds = 40 if quick else 120
    inproc_count = 150
    dispatch_count = 20
    gunicorn_rounds = 3 if quick else 6
    gunicorn_seconds = 2.0 if quick else 4.0
    use_wrk = shutil.which("wrk") is not None and not options.no_wrk
    have_gunicorn = importlib.util.find_spec("gunicorn") is not None and not options.skip_gunicorn

    print(f"pixel-wsgi benchmark on {machine()}")
    print(f"load generator: {'wrk' if use_wrk else 'python (http.client threads)'}; {'quick' if quick else 'full'} run")
    print()
    inproc = bench_inprocess(rounds, inproc_count)
    rows: List[Tuple[str, str, str, str]] = [
        ("in-process page", f"{inproc['page_per_s']:,.0f} ev/s", "", ""),
        ("in-process track", f"{inproc['track_per_s']:,.0f} ev/s", "", ""),
        ("in-process bare werkzeug", f"{inproc['bare_per_s']:,.0f} req/s", "", ""),
        ("in-process ratio", f"{inproc['ratio']:.3f}", "", "target >= 0.25"),
    ]
    gunicorn: Dict[str, Any] = {}
    if have_gunicorn:
        for worker_class in ("sync", "gthread"):
            result = gunicorn[worker_class] = bench_gunicorn(worker_class, gunicorn_rounds, gunicorn_seconds, use_wrk)
            label = "sync x2" if worker_class == "sync" else "gthread x2, 4 threads, reuse-port"
            for who in ("pixel", "bare"):
                figures = result[who]
                rows.append(
                    (f"gunicorn {label}: {who}", f"{figures['rps']:,.0f} req/s",
                     f"p50 {figures['p50']:.2f} ms", f"p99 {figures['p99']:.2f} ms")
                )  # fmt: skip
            rows.append((f"gunicorn {label}: ratio", f"{result['ratio']:.3f}", "", "target >= 0.80"))
    dispatch = bench_dispatch(rounds, dispatch_count)
    if dispatch["ratio"] is None:
        rows.append(("webhook dispatch ratio", "n/a", "", dispatch["note"]))
    else:
        rows.append(("webhook per event", f"{dispatch['webhook_us']:.0f} us", "", ""))
        rows.append(("raw http.client POST", f"{dispatch['raw_us']:.0f} us", "", ""))
        for key, label in (("urllib3", "urllib3 pool POST"), ("session", "requests Session.send")):
            cost, ratio = dispatch[f"{key}_us"], dispatch[f"{key}_ratio"]
            rows.append((f"{label} (reference)", f"{cost:.0f} us", f"x{ratio:.2f}", ""))
        rows.append(("webhook dispatch ratio", f"{dispatch['ratio']:.2f}", "", "target <= 2.0"))
    dead = bench_dead_destination(rounds, 2 * dispatch_count)
    if dead["added_ms"] is None:
        rows.append(("dead destination, open circuit", "n/a", "", dead["note"]))
    else:
        rows.append(("dead destination, open circuit", f"+{dead['added_ms']:.3f} ms", "", "target <= 1"))
    # The largest pixel worker after either load (gthread workers carry their threads).
    worker_rss = max((result["rss_mb"] for result in gunicorn.values()), default=None)
    if worker_rss is not None:
        bare_rss = f"bare {max(result['bare_rss_mb'] for result in gunicorn.values()):.1f} MB"
        rows.append(("RSS of one pixel worker", f"{worker_rss:.1f} MB", bare_rss, "target <= 50"))

    width = max(len(row[0]) for row in rows)
    for name, *values in rows:
        print(f"{name:<{width}}  {values[0]:>14}  {values[1]:>14}  {values[2]}".rstrip())
    print()
    summary = {
        "inproc_ratio": rounded(inproc["ratio"], 3),
        "gunicorn_sync_ratio": rounded(gunicorn.get("sync", {}).get("ratio"), 3),
        "gunicorn_gthread_ratio": rounded(gunicorn.get("gthread", {}).get("ratio"), 3),
        "dispatch_ratio": rounded(dispatch["ratio"], 2),
        "dead_destination_ms": rounded(dead["added_ms"], 3),
        "rss_mb": rounded(worker_rss, 1),
        "events_per_s": round(inproc["events_per_s"]),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
