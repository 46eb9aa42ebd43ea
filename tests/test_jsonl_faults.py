"""The JSON-lines destination under logrotate and a full disk, in real server processes.

Regressions: a file renamed by logrotate kept receiving every event, and once it was
deleted, events answered 200 went to a deleted inode; a disk-full episode left a
partial line that the first event after recovery was glued to.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pixel_wsgi.config import build_destination
from pixel_wsgi.destinations import DeliveryError, Payload
from tests.support.delivery import delivery_config, spooled_message_ids, track_url
from tests.support.processes import environment, free_port, write_toml
from tests.support.servers import gunicorn, http_get, server_process


def message_ids(path: Path) -> list[str]:
    """Every line parsed: a fragment or two lines glued together fail here."""
    if not path.exists():
        return []
    return [json.loads(line)["messageId"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_deleted_file_is_recreated_at_path(tmp_path):
    path = tmp_path / "events.jsonl"
    destination = build_destination("lines", {"type": "jsonl", "path": str(path)})
    try:
        destination.deliver(Payload({"messageId": "m-1"}))
        path.unlink()
        destination.deliver(Payload({"messageId": "m-2"}))
        os.rename(path, tmp_path / "events.jsonl.1")
        destination.deliver(Payload({"messageId": "m-3"}))
        assert message_ids(tmp_path / "events.jsonl.1") == ["m-2"]
        assert message_ids(path) == ["m-3"]
    finally:
        destination.close()


@pytest.mark.slow
def test_logrotate_rename_and_delete_under_load_loses_nothing(tmp_path):
    """gunicorn 2 workers x 2 threads, four clients; mid-load the file is renamed, then
    (after more than a second) the renamed file is read and deleted, as logrotate does."""
    path = tmp_path / "events.jsonl"
    config = write_toml(tmp_path / "pixel.toml", delivery_config(tmp_path, {"lines": {"type": "jsonl", "path": str(path)}}))
    answered: list[str] = []
    stop = threading.Event()
    env = {**environment(), "PIXEL_WSGI_CONFIG": str(config)}
    with gunicorn("pixel_wsgi:create_app()", output=tmp_path / "gunicorn.log", env=env, workers=2, threads=2) as server:

        def client(number: int) -> None:
            sent = 0
            while not stop.is_set():
                sent += 1
                message_id = f"m-{number}-{sent}"
                if http_get(server.url + track_url(message_id))[0] == 200:
                    answered.append(message_id)

        with ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(client, number) for number in range(4)]
            try:
                time.sleep(1.0)
                # On a loaded machine the workers may take longer than that to boot.
                deadline = time.monotonic() + 30
                while not (path.exists() and path.stat().st_size):
                    assert time.monotonic() < deadline, "no event written in 30 s"
                    time.sleep(0.05)
                os.rename(path, tmp_path / "events.jsonl.1")
                time.sleep(1.5)
                rotated_text = (tmp_path / "events.jsonl.1").read_text(encoding="utf-8")
                os.unlink(tmp_path / "events.jsonl.1")
                time.sleep(1.0)
            finally:
                stop.set()
            for done in clients:
                done.result()
        server.stop()
    rotated = [json.loads(line)["messageId"] for line in rotated_text.splitlines()]
    current = message_ids(path)
    spooled = spooled_message_ids(tmp_path / "spool.sqlite3")
    assert len(answered) > 100
    assert rotated and current
    missing = set(answered) - set(rotated) - set(current) - spooled
    assert not missing
    assert len(current) + len(rotated) == len(set(current) | set(rotated))  # no line written twice


def prefill(path: Path, size: int) -> None:
    line = json.dumps({"messageId": "prefill", "properties": {"padding": "x" * 900}}).encode() + b"\n"
    with open(path, "wb") as file:
        file.write(line * (size // len(line)))
    os.chmod(path, 0o600)


@pytest.mark.slow
def test_a_full_disk_leaves_no_fragment_for_the_next_line(tmp_path):
    """A real file size limit (RLIMIT_FSIZE, as a full disk) set on the running server
    cuts a line part-way; after it is lifted, every line of the file parses."""
    path = tmp_path / "events.jsonl"
    # Larger than the spool will grow: the limit cuts the JSON-lines file first.
    prefill(path, 2 * 1024 * 1024)
    config = write_toml(tmp_path / "pixel.toml", delivery_config(tmp_path, {"lines": {"type": "jsonl", "path": str(path)}}, budget=0.5))
    port = free_port()
    command = [sys.executable, "-m", "pixel_wsgi", "serve", "--config", str(config), "--port", str(port), "--log-level", "ERROR"]
    answered = []
    with server_process(command, output=tmp_path / "serve.log", env=environment(), port=port) as server:
        base = server.url

        def send(message_id: str) -> None:
            assert http_get(base + track_url(message_id))[0] == 200
            answered.append(message_id)

        send("m-before")
        # Room for part of the next line only.
        limit = path.stat().st_size + 100
        resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        for number in range(3):
            send(f"m-full-{number}")
        assert path.stat().st_size < limit  # the partial line was cut back off
        resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        send("m-after")
        server.stop()
    lines = [line for line in message_ids(path) if line != "prefill"]
    assert lines == ["m-before", "m-after"]
    assert spooled_message_ids(tmp_path / "spool.sqlite3") == {"m-full-0", "m-full-1", "m-full-2"}


def test_a_short_write_is_cut_back_in_process(tmp_path):
    """The same with the limit on this process: the destination reports the short write
    (the dispatcher then spools the event) and the next line follows the last whole one."""
    path = tmp_path / "events.jsonl"
    destination = build_destination("lines", {"type": "jsonl", "path": str(path)})
    try:
        destination.deliver(Payload({"messageId": "m-1"}))
        previous = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 5, previous[1]))
        try:
            with pytest.raises(DeliveryError, match="short write"):
                destination.deliver(Payload({"messageId": "m-2"}))
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        assert message_ids(path) == ["m-1"]
        destination.deliver(Payload({"messageId": "m-3"}))
        assert message_ids(path) == ["m-1", "m-3"]
    finally:
        destination.close()


def test_a_fragment_another_writer_appended_after_is_ended_before_the_next_line(tmp_path):
    """When a fragment cannot be cut back (another process's line follows it), it is left
    as one bad line (the other line glued to it cannot be helped) and the next line of
    this process starts on a line of its own, without an empty line between."""
    path = tmp_path / "events.jsonl"
    destination = build_destination("lines", {"type": "jsonl", "path": str(path)})
    try:
        destination.deliver(Payload({"messageId": "m-1"}))
        opened = destination._current()  # the descriptor the next line goes through
        fragment = b'{"messageId":"m-cut'
        os.write(opened.fd, fragment)  # what a short write leaves
        other = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(other, b'{"messageId":"m-other"}\n')  # another process, meanwhile
        finally:
            os.close(other)
        destination._remove_fragment(opened, len(fragment))
        destination.deliver(Payload({"messageId": "m-3"}))
        lines = path.read_text().splitlines()
        assert lines == ['{"messageId":"m-1"}', '{"messageId":"m-cut{"messageId":"m-other"}', '{"messageId":"m-3"}']
    finally:
        destination.close()


def test_a_fragment_at_the_end_of_the_file_is_ended_before_the_next_line(tmp_path):
    path = tmp_path / "events.jsonl"
    destination = build_destination("lines", {"type": "jsonl", "path": str(path)})
    try:
        destination.deliver(Payload({"messageId": "m-1"}))
        opened = destination._current()
        os.write(opened.fd, b'{"messageId":"m-cut')
        opened.needs_newline = True  # as when cutting it back failed
        destination.deliver(Payload({"messageId": "m-2"}))
        assert path.read_text().splitlines() == ['{"messageId":"m-1"}', '{"messageId":"m-cut', '{"messageId":"m-2"}']
    finally:
        destination.close()
