"""The spool on storage that fails for real: a 503, never a silent 200; a corrupt spool at start-up.

Each fault runs in a child process (``tests/support/spool_faults.py``) whose only
destination refuses connections, so every event must reach the spool. Afterwards the
test reads the spool file itself: every messageId that got a 200 is in it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from pixel_wsgi import ConfigError, PixelApp
from pixel_wsgi.spool import Spool
from tests.support.delivery import spooled_message_ids
from tests.support.processes import environment

NOT_STORED = "the event could not be delivered or stored; try again"
# A write refused for lack of room (a full disk, a file size limit) says so.
FULL = "spool is full"
# Root writes through any mode bits; without CAP_DAC_OVERRIDE the kernel checks them.
DROP_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def run_faulty(mode: str, directory, requests: int) -> list[dict]:
    prefix: list[str] = []
    if mode.startswith("readonly") and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.fail("running as root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE: root writes through read-only modes")
        prefix = DROP_DAC
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "tests.support.spool_faults", mode, str(directory), str(requests)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stdout
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "requests"),
    [
        pytest.param("full-disk", 40, id="full-disk-rlimit-fsize"),
        pytest.param("readonly-dir", 3, id="read-only-directory"),
        pytest.param("readonly-file", 3, id="read-only-spool-file"),
    ],
)
def test_unwritable_spool_answers_503_never_a_silent_200(tmp_path, mode, requests):
    directory = tmp_path / "spool"
    directory.mkdir()
    try:
        answers = run_faulty(mode, directory, requests)
    finally:
        directory.chmod(0o755)
        for child in directory.iterdir():
            child.chmod(0o644)
    assert len(answers) == requests
    accepted = {a["messageId"] for a in answers if a["status"] == 200}
    refused = [a for a in answers if a["status"] != 200]
    # Even for an errors_as_pixel source: a 200 would claim the event was kept.
    body = FULL if mode == "full-disk" else NOT_STORED
    assert refused and all(a == {"messageId": a["messageId"], "status": 503, "body": body} for a in refused)
    stored = spooled_message_ids(directory / "spool.sqlite3") - {"seed"}
    assert stored == accepted
    if mode == "full-disk":
        assert accepted, "the spool took nothing before it was full: the limit is too small to prove anything"
    else:
        assert not accepted


def _truncated(path) -> None:
    spool = Spool(str(path))
    for number in range(200):
        spool.add("hook", f"m-{number}", "web", b'{"pad": "' + b"x" * 500 + b'"}', attempts=1, error="e")
    spool.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _garbage_header(path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(
            lambda p: p.write_bytes(b"\x00" * 10),
            r"spool.path: .* cannot be used as a spool \(file is not a database\)",
            id="ten-zero-bytes",
        ),
        pytest.param(
            _truncated, r"spool.path: .* cannot be used as a spool \(database disk image is malformed\)", id="truncated-to-a-third"
        ),
        pytest.param(_garbage_header, r"spool.path: .* cannot be used as a spool \(.*\)", id="sqlite-header-then-garbage"),
        pytest.param(
            lambda p: p.mkdir(), r"spool.path: .* cannot be used as a spool \(unable to open database file\)", id="path-is-a-directory"
        ),
    ],
)
def test_corrupt_spool_is_a_clear_start_up_error(tmp_path, make, message):
    path = tmp_path / "spool.sqlite3"
    make(path)
    config = {
        "sources": [{"name": "web", "write_key": "k"}],
        "destinations": {"m": {"type": "memory"}},
        "spool": {"path": str(path)},
    }
    with pytest.raises(ConfigError, match=message):
        PixelApp(config)


def test_spool_whose_directory_is_a_file_is_a_start_up_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    config = {
        "sources": [{"name": "web", "write_key": "k"}],
        "destinations": {"m": {"type": "memory"}},
        "spool": {"path": str(tmp_path / "file" / "spool.sqlite3")},
    }
    with pytest.raises(ConfigError, match=r"spool.path: the folder .*/file does not exist"):
        PixelApp(config)
