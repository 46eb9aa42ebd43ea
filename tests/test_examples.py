"""Each example runs for real, with the command in its docstring: gunicorn, python, pixel-wsgi.

Servers are subprocesses on free loopback ports, hit over HTTP; events land in a real
SQLite file in the test's temporary directory and are read back with ``read_events``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from webtest import TestApp

from pixel_wsgi.destinations import DESTINATION_TYPES
from pixel_wsgi.destinations.sqlite import read_events, recover_journals
from pixel_wsgi.responses import TRANSPARENT_GIF
from pixel_wsgi.testing import memory_app

from .conftest import WRITE_KEY
from .support.examples import EXAMPLES, load_example
from .support.servers import free_port, gunicorn, http_get, serve_in_thread, server_process

ROOT = EXAMPLES.parent


@pytest.fixture
def sqlite_config(tmp_path):
    """A config file like examples/dev.toml, but storing into the test's directory."""
    path = tmp_path / "pixel.toml"
    path.write_text(
        f'[[sources]]\nname = "dev"\nwrite_key = "dev-write-key"\n'
        f'[destinations.events]\ntype = "sqlite"\npath = "{tmp_path / "events.sqlite3"}"\n'
        f'[spool]\npath = "{tmp_path / "spool.sqlite3"}"\n'
    )
    return path


def stored(tmp_path: Path) -> list[dict]:
    """What the store holds once the servers are gone, as ``pixel-wsgi events`` shows it
    (it commits first what a killed server left in its journal)."""
    recover_journals(str(tmp_path / "events.sqlite3"))
    return [row["event"] for row in read_events(str(tmp_path / "events.sqlite3"))]


def docstring_commands(name: str) -> str:
    return load_example(name).__doc__ or ""


# -- gunicorn ----------------------------------------------------------------------


@pytest.mark.slow
def test_gunicorn_serves_create_app_from_the_environment(tmp_path, sqlite_config):
    """The README's production line: gunicorn 'pixel_wsgi:create_app()' with PIXEL_WSGI_CONFIG."""
    with gunicorn(
        "pixel_wsgi:create_app()", output=tmp_path / "gunicorn.log", env={"PIXEL_WSGI_CONFIG": str(sqlite_config)},
        args=["--limit-request-line", "0"],
    ) as server:  # fmt: skip
        status, headers, body = http_get(f"{server.url}/pixel/v1/page?writeKey=dev-write-key&anonymousId=g1&name=Home")
        assert (status, headers["content-type"], body) == (200, "image/gif", TRANSPARENT_GIF), server.log()
        status, _, body = http_get(f"{server.url}/pixel/v1/page?writeKey=dev-write-key")
        assert (status, body) == (400, b"anonymousId or userId is required (at least one, not empty)")
        # The README's --limit-request-line 0: a 30 KB pixel URL reaches the app (gunicorn's
        # default stops at 4094 bytes), and the app's own 32 KiB limit answers 414.
        long_value = "x" * 30_000
        status, _, _ = http_get(f"{server.url}/pixel/v1/page?writeKey=dev-write-key&anonymousId=g2&properties.blob={long_value}")
        assert status == 200, server.log()
        status, _, body = http_get(f"{server.url}/pixel/v1/page?writeKey=dev-write-key&anonymousId=g3&properties.blob={long_value * 2}")
        assert (status, body) == (414, b"query string longer than the limit of 32768 bytes")
        assert server.stop() == 0
    assert [event["anonymousId"] for event in stored(tmp_path)] == ["g1", "g2"]


@pytest.mark.slow
def test_legacy_site_under_gunicorn_with_two_workers(tmp_path, sqlite_config):
    assert "gunicorn --pythonpath examples" in docstring_commands("legacy_site")
    with gunicorn(
        "legacy_site:create_app()", output=tmp_path / "gunicorn.log", env={"PIXEL_WSGI_CONFIG": str(sqlite_config)},
        workers=2, args=["--pythonpath", str(EXAMPLES)],
    ) as server:  # fmt: skip
        status, _, body = http_get(server.url + "/")
        assert status == 200 and b"The legacy site" in body, server.log()
        for number in range(6):
            status, _, _ = http_get(f"{server.url}/analytics/pixel/v1/track?writeKey=dev-write-key&anonymousId=w{number}&event=Clicked")
            assert status == 200, server.log()
        status, _, body = http_get(f"{server.url}/pixel/v1/track?writeKey=dev-write-key&anonymousId=x&event=Clicked")
        assert (status, body) == (404, b"legacy site: no page at /pixel/v1/track")  # outside the mount: the site's
        assert server.stop() == 0  # graceful: each worker commits its journal as it exits
    assert sorted(event["anonymousId"] for event in stored(tmp_path)) == [f"w{n}" for n in range(6)]


# -- Pyramid and Bottle: WebTest in test_hosts.py, a real server here ---------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pyramid_site", "bottle_site"])
def test_framework_site_as_its_docstring_runs_it(tmp_path, sqlite_config, name):
    assert f"python examples/{name}.py 8000" in docstring_commands(name)
    port = free_port()
    command = [sys.executable, str(EXAMPLES / f"{name}.py"), str(port)]
    with server_process(command, output=tmp_path / "site.log", env={"PIXEL_WSGI_CONFIG": str(sqlite_config)}, port=port) as server:
        status, _, body = http_get(server.url + "/hello/ada")
        assert (status, body) == (200, b"Hello, ada!\n"), server.log()
        status, headers, body = http_get(f"{server.url}/pixel/v1/track?writeKey=dev-write-key&userId=u1&event=Signed%20Up")
        assert (status, headers["content-type"], body) == (200, "image/gif", TRANSPARENT_GIF), server.log()
        status, _, _ = http_get(server.url + "/pixel/v1/pages")
        assert status == 404  # the framework's own 404
    assert [(event["event"], event["userId"]) for event in stored(tmp_path)] == [("Signed Up", "u1")]


# -- the email template ----------------------------------------------------------


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs)["src"] or "")


def test_email_template_pixel_records_the_open():
    example = load_example("email_template")
    pixel, events = memory_app(WRITE_KEY)
    html = example.render_email("https://px.example.com/pixel/v1", WRITE_KEY, {"id": "user-7", "first_name": "Grace <3"})
    assert "Hello Grace &lt;3," in html
    parser = _Images()
    parser.feed(html)
    [src] = parser.sources  # the parser undoes the &amp; escaping, as a mail client does
    parts = urlsplit(src)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "px.example.com", "/pixel/v1/track")
    TestApp(pixel).get(f"{parts.path}?{parts.query}")
    [event] = events
    assert (event["event"], event["userId"]) == ("Email Opened", "user-7")
    assert event["properties"] == {"campaign": "spring-2024", "list": "newsletter"}
    assert event["context"]["campaign"] == {"name": "spring-2024", "medium": "email", "source": "newsletter"}
    pixel.close()


@pytest.mark.slow
def test_email_template_command_prints_a_url_that_works(tmp_path):
    pixel, events = memory_app("dev-write-key")
    with serve_in_thread(pixel) as base_url:
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "email_template.py"), f"{base_url}/pixel/v1", "dev-write-key", "--url-only"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        status, _, _ = http_get(result.stdout.strip())
    assert status == 200
    assert events[0]["event"] == "Email Opened"
    pixel.close()


# -- the AMP page --------------------------------------------------------------------

# What amp-analytics' "rudderstack" vendor requests (amphtml
# extensions/amp-analytics/0.1/vendors/rudderstack.json): requestOrigin is the
# page's dataPlaneUrl var; ${...} are AMP variables, URL-encoded by AMP.
AMP_VENDOR_BASE = (
    "?writeKey=${writeKey}&context.library.name=Rudderstack AMP SDK&context.library.version=1.0.0"
    "&context.platform=AMP&anonymousId=${anonymousId}&context.locale=${browserLanguage}"
    "&context.userAgent=${userAgent}&context.page.path=${canonicalPath}&context.page.url=${canonicalUrl}"
    "&context.page.referrer=${documentReferrer}&context.page.title=${title}"
    "&context.screen.width=${screenWidth}&context.screen.height=${screenHeight}"
)
AMP_VENDOR_REQUESTS = {
    "page": "/pixel/v1/page${base}&properties.path=${canonicalPath}&properties.url=${canonicalUrl}"
    "&properties.referrer=${documentReferrer}&properties.title=${title}&name=${pageName}",
    "track": "/pixel/v1/track${base}&event=${eventName}",
}


def amp_request(kind: str, variables: dict[str, str]) -> str:
    """Expand the vendor's request the way AMP does: each variable's value URL-encoded."""
    template = AMP_VENDOR_REQUESTS[kind].replace("${base}", AMP_VENDOR_BASE).replace(" ", "%20")
    return re.sub(r"\$\{(\w+)\}", lambda match: quote(variables.get(match.group(1), ""), safe=""), template)


def amp_config(html: str) -> dict:
    match = re.search(r'<amp-analytics type="rudderstack">\s*<script type="application/json">(.*?)</script>', html, re.S)
    assert match, "no amp-analytics of the rudderstack vendor"
    return json.loads(match.group(1))


def test_amp_page_points_the_rudderstack_vendor_at_this_server():
    pixel, events = memory_app("dev-write-key")
    client = TestApp(load_example("amp_site").create_app(pixel))
    page = client.get("/")
    config = amp_config(page.text)
    origin = config["vars"]["dataPlaneUrl"]
    assert origin == "http://localhost"  # amp_site.py rewrote it to its own address
    assert "https://pixel.example.com" in (EXAMPLES / "amp.html").read_text()  # the production placeholder

    common = {
        "writeKey": config["vars"]["writeKey"],
        "anonymousId": '"amp-Zx8f3kQ"',  # CLIENT_ID() may arrive quoted
        "browserLanguage": "en-gb",
        "userAgent": "Mozilla/5.0 (AMP test)",
        "canonicalPath": "/articles/amp-pixel",
        "canonicalUrl": "https://www.example.com/articles/amp-pixel",
        "documentReferrer": "https://www.google.com/",
        "title": "An AMP article",
        "screenWidth": "412",
        "screenHeight": "915",
        "pageName": config["vars"]["pageName"],
    }
    client.get(amp_request("page", common))
    trigger = config["triggers"]["subscribeClick"]
    assert trigger["request"] == "track"
    client.get(amp_request("track", {**common, **trigger["vars"]}))

    page_event, track_event = events
    assert (page_event["type"], page_event["name"], page_event["anonymousId"]) == ("page", "AMP article", "amp-Zx8f3kQ")
    assert page_event["properties"]["url"] == "https://www.example.com/articles/amp-pixel"
    assert page_event["context"]["screen"] == {"width": 412, "height": 915}
    assert page_event["context"]["library"] == {"name": "Rudderstack AMP SDK", "version": "1.0.0"}
    assert (page_event["context"]["platform"], page_event["context"]["userAgent"]) == ("AMP", "Mozilla/5.0 (AMP test)")
    assert (track_event["event"], track_event["context"]["page"]["path"]) == ("Subscribe Clicked", "/articles/amp-pixel")
    assert client.get("/elsewhere", status=404)
    pixel.close()


# -- configuration files -----------------------------------------------------------

# Filled in for ${...} in examples/pixel.toml.
PIXEL_TOML_ENVIRONMENT = {
    "NEWSLETTER_WRITE_KEY": "nl-key", "SITE_WRITE_KEY": "site-key", "RUDDER_WRITE_KEY": "rk",
    "SEGMENT_WRITE_KEY": "sk", "WEBHOOK_SECRET": "s3cret", "NEWSLETTER_SIGNING_SECRET": "at-least-16-characters",
}  # fmt: skip
# The kinds examples/pixel.toml uses; an older checkout that lacks one reports exactly that.
PIXEL_TOML_TYPES = {"rudder": "rudderstack", "segment": "segment", "hook": "webhook", "log": "jsonl", "archive": "sqlite"}


def test_annotated_pixel_toml_passes_check_config(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pixel_wsgi", "check-config", str(EXAMPLES / "pixel.toml")],
            capture_output=True, text=True, timeout=30, env={**os.environ, **PIXEL_TOML_ENVIRONMENT, "PIXEL_WSGI_DATA": str(tmp_path)},
    )  # fmt: skip
    missing = sorted(name for name, kind in PIXEL_TOML_TYPES.items() if kind not in DESTINATION_TYPES)
    if not missing:
        assert result.returncode == 0, result.stderr
        assert "OK: 2 sources (newsletter, site), 5 destinations" in result.stdout
    else:  # pragma: no cover - only before the delivery destinations exist
        reported = sorted(re.findall(r"destinations\.(\w+)\.type: unknown type", result.stderr))
        assert (result.returncode, reported, result.stderr.count("\n  ")) == (1, missing, len(missing)), result.stderr


def test_pixel_toml_documents_every_option():
    """Every key that config.py reads appears in the annotated example."""
    from pixel_wsgi import config

    text = (EXAMPLES / "pixel.toml").read_text()
    schemas = [config.LimitsSchema, config.SpoolSchema, config.DispatchSchema, config.MetricsSchema, config.SourceSchema]
    schemas += [config.FetcherSchema, config.DedupeSchema, config.ConfigSchema]
    tables = {"sources", "destinations", "limits", "spool", "dispatch", "metrics", "fetchers", "dedupe"}
    keys = {name for schema in schemas for name in schema().fields if name not in tables}
    missing = sorted(key for key in keys if not re.search(rf"^\s*{key}\s*=", text, re.M))
    assert missing == []
    assert re.search(r"^\[\[fetchers\]\]$", text, re.M) and re.search(r"^\[dedupe\]$", text, re.M)


def test_dev_toml_passes_check_config():
    result = subprocess.run(
        [sys.executable, "-m", "pixel_wsgi", "check-config", str(EXAMPLES / "dev.toml")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_every_example_says_how_to_run_it():
    for path in sorted(EXAMPLES.glob("*.py")):
        doc = load_example(path.stem).__doc__ or ""
        assert re.search(r"^\s+(?:\S+=\S+ )*(?:python|gunicorn|pytest|curl|pixel-wsgi) ", doc, re.M), path.name
