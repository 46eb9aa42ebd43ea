"""Run the app in a child process whose spool storage fails for real, and report each answer.

    python -m tests.support.spool_faults MODE DIRECTORY REQUESTS

The only destination is a webhook on a port nobody listens on, so every event must go
to the spool in ``DIRECTORY/spool.sqlite3``. After start-up the storage is broken by
``MODE``, then ``REQUESTS`` track requests are made in-process; one JSON line per request
(``{"messageId": ..., "status": ...}``) is printed.

- ``readonly-dir``: the directory is made read-only (0555) before the spool file exists.
- ``readonly-file``: the spool file exists and it and its directory are made read-only.
  Both need a process without CAP_DAC_OVERRIDE (run it under ``setpriv`` with that
  capability dropped from the bounding set: root otherwise writes anywhere).
- ``full-disk``: ``RLIMIT_FSIZE`` caps every file this process writes at 64 KiB, which
  the kernel enforces exactly like a full disk (the write fails with EFBIG).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import sys

from werkzeug.test import Client

from pixel_wsgi import PixelApp

WRITE_KEY = "spool-fault-key"
FSIZE_LIMIT = 64 * 1024


def refused_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def main(mode: str, directory: str, requests: int) -> None:
    spool_path = os.path.join(directory, "spool.sqlite3")
    if mode == "readonly-file":
        # The spool exists and is valid: start-up opens it fine, writing it later fails.
        seeded = PixelApp(config(spool_path))
        seeded.spool.add("hook", "seed", "web", b"{}", attempts=1, error="seed")
        seeded.close()
    app = PixelApp(config(spool_path))
    if mode in ("readonly-dir", "readonly-file"):
        if os.path.exists(spool_path):
            os.chmod(spool_path, 0o444)
        os.chmod(directory, 0o555)
    elif mode == "full-disk":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    client = Client(app)
    padding = "x" * 2000
    for number in range(requests):
        message_id = f"m-{number}"
        response = client.get(
            "/pixel/v1/track",
            query_string={"writeKey": WRITE_KEY, "anonymousId": "a", "event": "E", "messageId": message_id, "properties.pad": padding},
        )
        body = response.get_data()
        text = body.decode("utf-8") if response.mimetype == "text/plain" else f"<{response.mimetype}, {len(body)} bytes>"
        print(json.dumps({"messageId": message_id, "status": response.status_code, "body": text}), flush=True)
        response.close()
    app.close()


def config(spool_path: str) -> dict:
    return {
        "sources": [{"name": "web", "write_key": WRITE_KEY, "errors_as_pixel": True}],
        "destinations": {"hook": {"type": "webhook", "url": refused_url(), "timeout": 0.2, "retries": 0}},
        "spool": {"path": spool_path},
        "dispatch": {"budget": 0.5},
    }


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
