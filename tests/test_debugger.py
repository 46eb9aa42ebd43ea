"""The live debugger of ``pixel-wsgi serve``, in-process and in a real headless Chromium."""

from __future__ import annotations

import html
import re
import sys

import pytest
from webtest import TestApp

from pixel_wsgi.debugger import MAX_ENTRIES, DebuggerApp, RequestLog
from pixel_wsgi.testing import memory_app

from .support.browser import Browser
from .support.processes import environment, write_toml
from .support.servers import http_get, server_process
from .test_browser import CHROMIUM_FLAGS, chromium

WRITE_KEY = "debugger-key-1234"


@pytest.fixture
def debugged():
    app, events = memory_app(WRITE_KEY)
    log = RequestLog()
    app.observe(log)
    yield TestApp(DebuggerApp(app, log, hint="http://127.0.0.1/pixel/v1/track?a=<b>"), extra_environ={"REMOTE_ADDR": "127.0.0.1"}), log
    app.close()


@pytest.mark.parametrize(
    ("unknown_params", "expected"),
    [
        pytest.param("ignore", ["propertes.revenue", "type", "sig", "context.ip"], id="unknown-ignored"),
        pytest.param("keep", ["type", "sig", "context.ip"], id="unknown-kept"),
    ],
)
def test_ignored_parameters_in_query_order(tmp_path, unknown_params, expected):
    """Unknown names unless the source keeps them, the server's own but the write key, and
    context.ip (the server says it): in the order the query gave them."""
    app, _ = memory_app(WRITE_KEY, unknown_params=unknown_params, spool={"path": str(tmp_path / "spool.sqlite3")})
    try:
        grouped = {name: ["x"] for name in ("writeKey", "propertes.revenue", "event", "type", "context.page.path", "sig", "context.ip")}
        assert app.ignored_parameters("track", grouped, app.config.sources[0]) == expected
    finally:
        app.close()


def test_accepted_events_rejections_and_ignored_parameters_are_listed(debugged):
    client, log = debugged
    client.get(f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=a1&event=Bought&propertes.revenue=9.99&type=page&context.ip=1.2.3.4")
    client.get(f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=a1", status=400)
    client.get("/pixel/v1/page?writeKey=wrong-key&anonymousId=a1", status=401)
    answer = client.get("/_debugger/requests?after=0").json
    accepted, missing, unknown = answer["entries"]
    assert answer["latest"] == unknown["id"]
    assert accepted["outcome"] == "accepted" and accepted["event"]["event"] == "Bought"
    assert accepted["ignored"] == ["propertes.revenue", "type", "context.ip"]
    assert (missing["status"], missing["reason"], missing["query"]) == (400, "event: required", "writeKey=debu…&anonymousId=a1")
    assert (unknown["status"], unknown["reason"], unknown["source"]) == (401, "invalid write key", None)
    assert WRITE_KEY not in client.get("/_debugger/requests").text
    assert client.get(f"/_debugger/requests?after={missing['id']}").json == {"latest": unknown["id"], "entries": [unknown]}


def test_only_the_last_hundred_are_kept(debugged):
    client, log = debugged
    for n in range(MAX_ENTRIES + 5):
        client.get(f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=a{n}&event=E")
    entries = client.get("/_debugger/requests?after=0").json["entries"]
    assert len(entries) == MAX_ENTRIES
    assert entries[0]["event"]["anonymousId"] == "a5"


def test_the_page_is_for_loopback_clients_only(debugged):
    client, _ = debugged
    page = client.get("/")
    assert page.content_type == "text/html"
    assert html.escape("http://127.0.0.1/pixel/v1/track?a=<b>") in page.text and "<b>" not in page.text
    # Anyone else reaches the pixel app, which has no such path.
    client.get("/", extra_environ={"REMOTE_ADDR": "192.0.2.1"}, status=404)
    client.get("/_debugger/requests", extra_environ={"REMOTE_ADDR": "192.0.2.1"}, status=404)


def serve(tmp_path, *args):
    def ready(log: str) -> str | None:
        match = re.search(r"page:\s+(http://127\.0\.0\.1:\d+)/", log)
        return match.group(1) if match else None

    command = [sys.executable, "-m", "pixel_wsgi", "serve", "--port", "0", *args]
    return server_process(command, output=tmp_path / "serve.log", env=environment(), cwd=tmp_path, ready=ready)


@pytest.mark.slow
@pytest.mark.parametrize(("debugger", "status"), [([], 404), (["--debugger"], 200)])
def test_with_a_config_the_debugger_is_off_unless_asked_for(tmp_path, debugger, status):
    config = write_toml(
        tmp_path / "pixel.toml",
        {
            "sources": [{"name": "site", "write_key": WRITE_KEY}],
            "destinations": {"store": {"type": "sqlite", "path": str(tmp_path / "events.sqlite3")}},
            "spool": {"path": str(tmp_path / "spool.sqlite3")},
        },
    )
    with serve(tmp_path, "--config", str(config), *debugger) as server:
        assert http_get(server.url + "/")[0] == status
        assert ("debugger:" in server.log()) == bool(debugger)


@pytest.mark.slow
def test_chromium_shows_requests_as_they_arrive(tmp_path):
    """Open the page, then send pixels: they appear without a reload. The screenshot
    (``debugger.png`` in the test's folder) is what a newcomer sees first."""
    with serve(tmp_path, "--write-key", WRITE_KEY) as server:
        with Browser(chromium(), CHROMIUM_FLAGS, tmp_path / "profile", server.url + "/", height=1300) as browser:
            # The page is up and has asked for news at least once (and got none).
            browser.wait_for("document.body.dataset.polled >= 1")
            assert browser.evaluate("document.querySelectorAll('article').length") == 0
            base = server.url + "/pixel/v1"
            assert (
                http_get(
                    f"{base}/track?writeKey={WRITE_KEY}&anonymousId=reader-7&event=Signed%20Up&properties.revenue=29.99&propertes.plan=pro"
                )[0]
                == 200
            )
            assert http_get(f"{base}/track?writeKey={WRITE_KEY}&anonymousId=reader-7")[0] == 400
            assert (
                http_get(
                    f"{base}/page?writeKey={WRITE_KEY}&userId=u-1&name=Pricing&context.page.path=/pricing&properties.note=%3Cb%3Ebold%3C/b%3E"
                )[0]
                == 200
            )
            browser.wait_for("document.querySelectorAll('article').length === 3")
            dom = browser.evaluate("document.documentElement.outerHTML")
            browser.screenshot(tmp_path / "debugger.png")
        log = server.log()
    outcomes = re.findall(r'<article class="entry[^"]*" data-outcome="(\w+)"', dom)
    assert outcomes == ["accepted", "rejected", "accepted"]  # newest first
    assert "Signed Up" in dom and "Pricing" in dom and "29.99" in dom
    assert '<span class="chip">propertes.plan</span>' in dom
    assert "event: required" in dom
    # Values from anyone's URL are text, never markup.
    assert "&lt;b&gt;bold&lt;/b&gt;" in dom and "<b>bold</b>" not in dom
    assert log.count('"GET / HTTP') == 1  # never reloaded
    assert (tmp_path / "debugger.png").stat().st_size > 10_000
