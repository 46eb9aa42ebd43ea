"""``{prefix}/health``: 200 while the spool can be written, 503 when it cannot; never an event."""

from __future__ import annotations

import os
import re
import shutil
import sys

import pytest
from webtest import TestApp

from pixel_wsgi import PixelApp

from .support.processes import environment, write_toml
from .support.servers import http_get, server_process
from .support.spool_faults import refused_url

# Root writes through any mode bits; without CAP_DAC_OVERRIDE the kernel checks them.
DROP_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def config(tmp_path, **top):
    return {
        "sources": [{"name": "site", "write_key": "health-key"}],
        "destinations": {"memory": {"type": "memory"}},
        "spool": {"path": str(tmp_path / "spool.sqlite3")},
        **top,
    }


@pytest.mark.parametrize("prefix", ["/pixel/v1", "", "/px"])
def test_health_is_ok_json_and_never_an_event(tmp_path, prefix):
    app = PixelApp(config(tmp_path, prefix=prefix))
    client = TestApp(app)
    response = client.get(f"{prefix}/health?writeKey=health-key&anonymousId=a&event=E")
    assert response.json["status"] == "ok"
    assert response.content_type == "application/json"
    assert "no-store" in response.headers["Cache-Control"]
    assert client.head(f"{prefix}/health").body == b""
    client.post(f"{prefix}/health", status=405)
    assert app.destination("memory").events == []
    app.close()


@pytest.mark.slow
def test_health_follows_the_spool_being_unwritable_for_real(tmp_path):
    """A gunicorn without CAP_DAC_OVERRIDE: its spool folder and file made read-only
    answer 503; restored, 200 again. (Connections the workers already hold may still
    write for a while, but a new worker, or a restart, could not use that spool.)"""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.fail("running as root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE: root writes through read-only modes")
    folder = tmp_path / "spool"
    folder.mkdir()
    settings = config(folder)
    settings["destinations"] = {"hook": {"type": "webhook", "url": refused_url(), "timeout": 0.2, "retries": 0}}
    path = write_toml(tmp_path / "pixel.toml", settings)
    command = [*DROP_DAC, sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "--workers", "1", "pixel_wsgi:create_app()"]
    env = {**environment(), "PIXEL_WSGI_CONFIG": str(path)}

    def ready(log: str) -> str | None:
        match = re.search(r"Listening at: (http://[\d.:]+)", log)
        return match.group(1) if match else None

    with server_process(command, output=tmp_path / "gunicorn.log", env=env, ready=ready) as server:
        track = server.url + "/pixel/v1/track?writeKey=health-key&anonymousId=a&event=E"
        assert http_get(server.url + "/pixel/v1/health")[0] == 200
        assert http_get(track)[0] == 200  # spooled: the spool file exists now
        try:
            os.chmod(folder / "spool.sqlite3", 0o444)
            os.chmod(folder, 0o555)
            status, headers, body = http_get(server.url + "/pixel/v1/health")
            assert (status, headers["content-type"]) == (503, "application/json"), body
            assert b'"status": "unavailable"' in body and b"spool.path" in body
        finally:
            os.chmod(folder, 0o755)
            os.chmod(folder / "spool.sqlite3", 0o644)
        assert http_get(server.url + "/pixel/v1/health")[0] == 200
        server.stop()
    assert "health check failed: spool.path" in server.log()
