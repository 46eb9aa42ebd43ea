"""Hosts for deployment tests: network namespaces joined to this one by veth pairs, and nginx.

``Host`` is a "machine": its own network namespace (``ip netns``), reached from the test's
namespace at ``host.address`` over a veth pair, with a default route back so it can reach
addresses of the test's namespace (a sink bound to ``host.gateway``). Everything is
removed on exit, even when the test fails: processes started in the namespace (each in a
process group of its own) and the namespace, which takes its end of the veth pair with it.
Needs root (CI runs the suite as root).
"""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .servers import wait_for_port

STOP_TIMEOUT = 5.0


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    name: str
    subnet: int  # the third octet of 10.213.X.0/24: .1 on the test's side, .2 in the namespace
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return f"10.213.{self.subnet}.1"

    @property
    def address(self) -> str:
        return f"10.213.{self.subnet}.2"

    def __enter__(self) -> Host:
        self._remove()  # a namespace left by a killed earlier run
        outside, inside = f"{self.name}o", f"{self.name}i"
        try:
            ip("netns", "add", self.name)
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", self.name)
            ip("addr", "add", f"{self.gateway}/24", "dev", outside)
            ip("link", "set", outside, "up")
            ip("-n", self.name, "addr", "add", f"{self.address}/24", "dev", inside)
            ip("-n", self.name, "link", "set", inside, "up")
            ip("-n", self.name, "link", "set", "lo", "up")
            ip("-n", self.name, "route", "add", "default", "via", self.gateway)
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes:
            self.kill(process)
        self._remove()

    def start(self, command: Sequence[str], *, output: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """Run ``command`` inside the namespace, in a process group of its own."""
        with open(output, "ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *command], stdout=log, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True
            )
        self.processes.append(process)
        return process

    def run(self, command: Sequence[str], *, env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *command], env=dict(env), capture_output=True, text=True, timeout=timeout)

    @staticmethod
    def kill(process: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
        """Signal the process and every process of its group (gunicorn's workers too)."""
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)

    def _remove(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
        subprocess.run(["ip", "link", "delete", f"{self.name}o"], capture_output=True)


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{snippet}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://pixel;
{location}
        }}
    }}
}}
"""


def nginx_conf(directory: Path, port: int, upstreams: Sequence[str], snippet: str, location: str) -> Path:
    servers = "\n".join(f"    server {address} max_fails=1 fail_timeout=5s;" for address in upstreams)
    text = NGINX_CONF.format(dir=directory, port=port, snippet=snippet.replace("{servers}", servers), location=location)
    path = directory / "nginx.conf"
    path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def nginx(directory: Path, port: int, upstreams: Sequence[str], snippet: str, location: str) -> Iterator[str]:
    """Debian's nginx in the foreground on 127.0.0.1:``port``; yields its base URL.

    Started in a process group of its own and stopped with the whole group: killing
    only the master would leave its worker orphaned, still holding the port.
    """
    conf = nginx_conf(directory, port, upstreams, snippet, location)
    command = ["nginx", "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf)]
    with open(directory / "stdout.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        Host.kill(process, signal.SIGTERM)  # nginx's fast shutdown, then SIGKILL for anything left
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
