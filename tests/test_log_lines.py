"""One log record is one line, and under gunicorn the records are in its error log.

A client controls parameter names, values and the path: a line break in any of them
must not let it write a second, forged record. Under gunicorn, with no logging set-up
by the user, rejections (INFO), delivery failures and circuit changes must appear in
gunicorn's ``--error-logfile`` with its time and level format.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from webtest import TestApp

from pixel_wsgi import PixelApp
from pixel_wsgi.logsafe import log_safe
from tests.support.delivery import delivery_config, track_url
from tests.support.processes import environment, free_port, write_toml
from tests.support.servers import ServerProcess, http_get, server_process

# Every character that some reader takes as the end of a line.
LINE_BREAKS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
FORGED = "x{}ERROR forged record: admin password reset"


@pytest.mark.parametrize("brk", [pytest.param(brk, id=f"U+{ord(brk):04X}") for brk in LINE_BREAKS])
def test_log_safe_leaves_one_line(brk):
    text = log_safe(FORGED.format(brk))
    assert text.splitlines() == [text]
    assert "ERROR forged record" in text
    assert "\\" in text  # escaped visibly, not dropped


def forged_query(brk: str) -> str:
    # Percent-encoded as a browser would send it: the break arrives in the parameter name.
    name = FORGED.format(brk).replace(" ", "%20").encode("utf-8")
    encoded = "".join(f"%{byte:02X}" if byte < 0x21 or byte > 0x7E else chr(byte) for byte in name)
    return track_url("m-forge") + f"&{encoded}=1"


@pytest.mark.parametrize("brk", [pytest.param(brk, id=f"U+{ord(brk):04X}") for brk in LINE_BREAKS])
def test_a_forged_parameter_name_stays_in_one_record_line(tmp_path, caplog, brk):
    config = delivery_config(tmp_path, {"store": {"type": "sqlite", "path": str(tmp_path / "events.sqlite3")}})
    config["sources"][0]["unknown_params"] = "reject"
    app = PixelApp(config)
    try:
        with caplog.at_level(logging.INFO, logger="pixel_wsgi"):
            TestApp(app).get(forged_query(brk), status=400)
        [record] = [r for r in caplog.records if "rejected" in r.getMessage()]
        line = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record)
        assert line.splitlines() == [line]
        assert "forged record" in line
    finally:
        app.close()


def gunicorn_config(tmp_path: Path) -> Path:
    config = delivery_config(
        tmp_path,
        {
            "store": {"type": "sqlite", "path": str(tmp_path / "events.sqlite3")},
            "down": {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}", "retries": 0},
        },
        budget=0.5,
        breaker_failures=1,
    )
    config["sources"][0]["unknown_params"] = "reject"
    return write_toml(tmp_path / "pixel.toml", config)


@contextmanager
def gunicorn_with_error_log(tmp_path: Path, error_log: Path, log_level: str) -> Iterator[ServerProcess]:
    """gunicorn writing its error log to a file, on a port given on its command line
    (at ``--log-level warning`` it does not log which port it took)."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2",
        "--log-level", log_level, "--error-logfile", str(error_log), "pixel_wsgi:create_app()",
    ]  # fmt: skip
    env = {**environment(), "PIXEL_WSGI_CONFIG": str(gunicorn_config(tmp_path))}
    with server_process(command, output=tmp_path / "out.log", env=env, port=port) as server:
        yield server


# gunicorn's error log format: "[2026-11-23 05:23:19 +0000] [1234] [INFO] message".
GUNICORN_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[(?P<level>[A-Z]+)\] (?P<message>.*)$")


@pytest.mark.slow
def test_gunicorn_error_log_has_rejections_failures_and_circuit_changes(tmp_path):
    error_log = tmp_path / "error.log"
    with gunicorn_with_error_log(tmp_path, error_log, "info") as server:
        assert http_get(server.url + forged_query("\u2028"))[0] == 400
        assert http_get(server.url + forged_query("\n"))[0] == 400
        assert http_get(server.url + track_url("m-down"))[0] == 200
        server.stop()
    lines = error_log.read_text(encoding="utf-8").split("\n")
    ours = [match for match in map(GUNICORN_LINE.match, lines) if match]
    # Every line of the file is a gunicorn record: nothing forged, nothing unformatted.
    assert all(GUNICORN_LINE.match(line) for line in lines if line), "\n".join(lines)
    messages = [(match["level"], match["message"]) for match in ours]
    rejections = [message for level, message in messages if level == "INFO" and message.startswith("rejected 400")]
    assert len(rejections) == 2
    assert "\\u2028ERROR forged record" in rejections[0]
    assert "\\nERROR forged record" in rejections[1]
    assert any(level == "WARNING" and "delivery to down failed" in message and "m-down" in message for level, message in messages)
    assert any(level == "WARNING" and "circuit open" in message for level, message in messages)


@pytest.mark.slow
def test_gunicorn_log_level_warning_leaves_rejections_out(tmp_path):
    error_log = tmp_path / "error.log"
    with gunicorn_with_error_log(tmp_path, error_log, "warning") as server:
        assert http_get(server.url + forged_query("\n"))[0] == 400
        assert http_get(server.url + track_url("m-down"))[0] == 200
        server.stop()
    text = error_log.read_text(encoding="utf-8")
    assert "rejected 400" not in text
    assert re.search(r"\[WARNING\] delivery to down failed", text), text


@pytest.mark.slow
@pytest.mark.parametrize("escape", ["%E2%80%A8", "%E2%80%A9", "%C2%85", "%0A", "%0D"])
def test_pixel_wsgi_serve_request_log_stays_one_line(tmp_path, escape):
    """werkzeug's request log decodes the path and query: a line break in them must not
    start a line of its own in ``pixel-wsgi serve``'s output."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "pixel_wsgi",
        "serve",
        "--port",
        str(port),
        "--write-key",
        "serve-key",
        "--db",
        str(tmp_path / "e.sqlite3"),
    ]
    with server_process(command, output=tmp_path / "serve.log", env=environment(), port=port, cwd=tmp_path) as server:
        url = server.url + f"/pixel/v1/track?writeKey=serve-key&anonymousId=a&event=x{escape}FORGED%20line"
        assert http_get(url)[0] == 200
        time.sleep(0.2)
        server.stop()
    lines = server.log().splitlines()
    assert not any(line.startswith("FORGED") for line in lines), lines
    assert any("FORGED" in line and "GET /pixel/v1/track" in line for line in lines), lines
