"""examples/signed_email.py and examples/email.toml: signed opens and clicks, for real.

The rendered email is parsed the way a mail client reads it (HTML entities undone),
its URLs are requested in-process, over a socket from the example's own command line,
and by headless Chromium, which loads the open pixel and follows the click to the
landing page.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from webtest import TestApp
from werkzeug.wrappers import Response

from pixel_wsgi import PixelApp, PixelMiddleware
from pixel_wsgi.destinations.sqlite import read_events

from .support.examples import EXAMPLES, load_example
from .support.servers import http_get, serve_in_thread
from .test_browser import CHROMIUM_FLAGS, chromium

WRITE_KEY = "email-key"
SECRET = "email-signing-secret-0123456789"
ENVIRONMENT = {"EMAIL_WRITE_KEY": WRITE_KEY, "EMAIL_SIGNING_SECRET": SECRET}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("img", "a"):
            self.urls[found["id"] or ""] = (found.get("src") if tag == "img" else found.get("href")) or ""


def rendered_urls(html: str) -> dict[str, str]:
    parser = _Links()
    parser.feed(html)
    return {name: f"{urlsplit(url).path}?{urlsplit(url).query}" for name, url in parser.urls.items()}


@pytest.fixture
def email_app(tmp_path, monkeypatch):
    """The app of examples/email.toml, storing in the test's directory."""
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    app = PixelApp(str(EXAMPLES / "email.toml"))
    yield app
    app.close()


def stored_events(app: PixelApp) -> list[dict]:
    app.flush()
    if not os.path.exists("email-events.sqlite3"):  # nothing was ever stored
        return []
    return [row["event"] for row in read_events("email-events.sqlite3")]


def test_the_email_records_one_open_and_its_clicks(email_app):
    example = load_example("signed_email")
    html = example.render_email("https://px.example.com/pixel/v1", WRITE_KEY, SECRET, {"id": "user-7", "first_name": "Grace <3"})
    assert "Hello Grace &lt;3," in html
    urls = rendered_urls(html)
    client = TestApp(email_app)
    client.get(urls["open"])
    client.get(urls["open"])  # opened again: the same messageId, not delivered twice
    assert client.get(urls["cta"], status=302).headers["Location"] == "https://shop.example.com/spring"
    assert client.get(urls["unsubscribe"], status=302).headers["Location"] == "https://shop.example.com/unsubscribe"
    events = stored_events(email_app)
    assert [(event["event"], event["userId"]) for event in events] == [
        ("Email Opened", "user-7"),
        ("Link Clicked", "user-7"),
        ("Link Clicked", "user-7"),
    ]
    assert events[1]["properties"] == {"campaign": "spring-2024", "link": "cta", "url": "https://shop.example.com/spring"}


def test_the_emails_urls_cannot_be_forged(email_app):
    example = load_example("signed_email")
    urls = rendered_urls(example.render_email("https://px.example.com/pixel/v1", WRITE_KEY, SECRET, example.SAMPLE_RECIPIENT))
    client = TestApp(email_app)
    forged_user = urls["open"].replace("user-42", "user-43")
    # errors_as_pixel: the forgery gets an image, and no event.
    assert client.get(forged_user).headers["X-Pixel-Error"] == "invalid signature"
    forged_click = urls["cta"].replace("shop.example.com", "evil.example.net")
    assert client.get(forged_click, status=403).text == "invalid signature"
    unsigned = "/pixel/v1/track?writeKey=email-key&userId=u&event=Email%20Opened"
    assert client.get(unsigned).headers["X-Pixel-Error"] == "invalid signature"
    assert stored_events(email_app) == []


def test_email_toml_passes_check_config():
    result = subprocess.run(
        [sys.executable, "-m", "pixel_wsgi", "check-config", str(EXAMPLES / "email.toml")],
        capture_output=True, text=True, timeout=30, env={**os.environ, **ENVIRONMENT},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "OK: 1 source (email)" in result.stdout or "OK: 1 sources (email)" in result.stdout, result.stdout


@pytest.mark.slow
def test_the_command_line_prints_urls_that_work(email_app):
    with serve_in_thread(email_app) as base_url:
        env = {**os.environ, **ENVIRONMENT}
        urls = {}
        for flag in ("--open-url", "--click-url"):
            result = subprocess.run(
                [sys.executable, str(EXAMPLES / "signed_email.py"), f"{base_url}/pixel/v1", WRITE_KEY, flag],
                capture_output=True, text=True, timeout=30, check=True, env=env,
            )  # fmt: skip
            urls[flag] = result.stdout.strip()
        open_status, open_headers, _ = http_get(urls["--open-url"])
        click_status, click_headers, _ = http_get(urls["--click-url"])
    assert open_status == 200 and "x-pixel-error" not in open_headers
    assert (click_status, click_headers["location"]) == (302, "https://shop.example.com/spring")
    assert [event["event"] for event in stored_events(email_app)] == ["Email Opened", "Link Clicked"]


LANDING = "<!doctype html><title>landed</title><p>Spring collection</p>"
HARNESS = """
<script>
  // The test's part, not the email's: wait for the open pixel, then follow the
  // email's link in a frame (as a click would) and report where it landed.
  var pixel = document.getElementById("open");
  function follow(width) {
    var frame = document.createElement("iframe");
    frame.onload = function () {
      document.title = "open=" + width + " landed=" + frame.contentDocument.title + " at=" + frame.contentWindow.location.pathname;
    };
    frame.src = document.getElementById("cta").href;
    document.body.appendChild(frame);
  }
  if (pixel.complete) { follow(pixel.naturalWidth || "error"); }
  else {
    pixel.onload = function () { follow(pixel.naturalWidth); };
    pixel.onerror = function () { follow("error"); };
  }
</script>
"""


@pytest.mark.slow
def test_chromium_loads_the_signed_open_and_follows_the_signed_click(email_app, tmp_path):
    example = load_example("signed_email")
    pages: dict[str, str] = {}

    def site(environ, start_response):
        body = pages.get(environ.get("PATH_INFO", ""), "")
        return Response(body, status=200 if body else 404, content_type="text/html; charset=utf-8")(environ, start_response)

    with serve_in_thread(PixelMiddleware(site, email_app)) as base_url:
        # The click is signed, so it may land on this test's own host.
        html = example.render_email(f"{base_url}/pixel/v1", WRITE_KEY, SECRET, example.SAMPLE_RECIPIENT, shop=f"{base_url}/landing")
        pages["/email"] = html.replace("</body>", HARNESS + "</body>")
        pages["/landing"] = LANDING
        result = subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", base_url + "/email"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    title = re.search(r"<title>(.*?)</title>", result.stdout)
    assert title, f"no DOM from Chromium (exit {result.returncode}):\n{result.stderr[-2000:]}"
    assert title.group(1) == "open=1 landed=landed at=/landing"
    opened, clicked = stored_events(email_app)
    assert (opened["event"], clicked["event"]) == ("Email Opened", "Link Clicked")
    assert clicked["properties"]["url"] == f"{base_url}/landing"
    assert "Chrome" in opened["context"]["userAgent"]
    # Headless Chromium says so in its user agent, and the database knows it for a bot.
    assert opened["context"]["pixel"] == clicked["context"]["pixel"] == {"fetcher": "bot", "machine": True}
