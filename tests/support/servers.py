"""Real servers for tests: a WSGI app in a thread, gunicorn or any command in a subprocess.

Everything here binds 127.0.0.1 only and is stopped by the context manager that
started it, even when the test fails::

    from tests.support.servers import gunicorn, http_get, serve_in_thread

    with serve_in_thread(app) as base_url:             # werkzeug's server, port 0
        status, headers, body = http_get(base_url + "/pixel/v1/page?...")

    with gunicorn("pixel_wsgi:create_app()", env={"PIXEL_WSGI_CONFIG": path}) as server:
        http_get(server.url + "/pixel/v1/track?...")   # server.log() on failure

``http_get`` talks ``http.client`` directly: no proxy settings from the environment
can send a test's request anywhere but the loopback address it names.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

from werkzeug.serving import make_server

LOOPBACK = "127.0.0.1"
# How long a subprocess server may take to start listening; gunicorn with two
# workers on a busy two-core machine needs about a second.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
_GUNICORN_LISTENING = re.compile(r"Listening at: http://[^:]+:(\d+)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Prefer port 0 where the server can report its port (``serve_in_thread``,
    ``gunicorn``); this is for commands that need a number on their command line.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, process: subprocess.Popen[Any] | None = None, timeout: float = START_TIMEOUT) -> None:
    """Return once something accepts connections on ``port``; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening on port {port}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout} s")


def http_get(
    url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """One request over a real socket: ``(status, headers with lower-case names, body)``."""
    parts = urlsplit(url)
    if parts.hostname not in (LOOPBACK, "localhost"):
        raise ValueError(f"tests only talk to {LOOPBACK}, not {parts.hostname}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        connection.request(method, path, headers=dict(headers or {}))
        response = connection.getresponse()
        body = response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, body
    finally:
        connection.close()


@contextmanager
def serve_in_thread(app: Callable[..., Any], *, threaded: bool = True) -> Iterator[str]:
    """Serve a WSGI app with werkzeug's server in a daemon thread; yields the base URL."""
    server = make_server(LOOPBACK, 0, app, threaded=threaded)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT)


@dataclass
class ServerProcess:
    """A server subprocess; ``output`` is its combined stdout and stderr, in a file."""

    process: subprocess.Popen[bytes]
    output: Path
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Ask politely, then kill; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        return int(self.process.returncode)


@contextmanager
def server_process(
    command: Sequence[str],
    *,
    output: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    port: int | None = None,
    ready: Callable[[str], str | None] | None = None,
    timeout: float = START_TIMEOUT,
) -> Iterator[ServerProcess]:
    """Run ``command`` until the block ends; it is always killed, even when a test fails.

    Readiness: either ``port`` (the command was told to listen there) or ``ready``,
    which reads the output so far and returns the base URL once the server says it
    is listening (for commands given port 0).
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(output, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
    server = ServerProcess(process, output)
    try:
        if port is not None:
            wait_for_port(port, process=process, timeout=timeout)
            server.url = f"http://{LOOPBACK}:{port}"
        elif ready is not None:
            deadline = time.monotonic() + timeout
            while not server.url:
                if process.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited with {process.returncode}:\n{server.log()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{command[0]} did not start in {timeout} s:\n{server.log()}")
                server.url = ready(server.log()) or ""
                if not server.url:
                    time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(STOP_TIMEOUT)


def _gunicorn_ready(log: str) -> str | None:
    match = _GUNICORN_LISTENING.search(log)
    return f"http://{LOOPBACK}:{match.group(1)}" if match else None


@contextmanager
def gunicorn(
    app_spec: str,
    *,
    output: Path,
    env: Mapping[str, str] | None = None,
    workers: int = 1,
    threads: int = 2,
    args: Sequence[str] = (),
    cwd: str | os.PathLike[str] | None = None,
) -> Iterator[ServerProcess]:
    """gunicorn serving ``app_spec`` on a port of its own choosing on 127.0.0.1.

    Bound to port 0 and read back from gunicorn's "Listening at" line, so two tests
    can never race for a port. gunicorn is run as ``python -m gunicorn`` of the
    interpreter running the tests, so the venv's gunicorn is the one tested.
    """
    command = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{LOOPBACK}:0",
        "--workers", str(workers),
        "--threads", str(threads),
        "--graceful-timeout", "2",
        "--log-level", "info",
        *args,
        app_spec,
    ]  # fmt: skip
    with server_process(command, output=output, env=env, cwd=cwd, ready=_gunicorn_ready) as server:
        if workers > 1:
            _wait_for_workers(server, workers)
        yield server


def _wait_for_workers(server: ServerProcess, workers: int) -> None:
    """gunicorn listens before its workers have booted; wait until all of them say so."""
    deadline = time.monotonic() + START_TIMEOUT
    while server.log().count("Booting worker") < workers:
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise RuntimeError(f"gunicorn workers did not boot:\n{server.log()}")
        time.sleep(0.05)
