"""A real browser loads the pixel: headless Chromium, a page on localhost, ``<img>`` tags.

The page's script writes each image's ``naturalWidth`` (or ``error``) into the title,
and ``--dump-dom`` prints the DOM after the load event, which waits for the images.
Three images: a good pixel (loads, 1 pixel wide, stored), a bad one from a strict
source (a 400 text answer: the browser shows a broken image, nothing stored) and the
same mistake from an ``errors_as_pixel`` source (still a GIF: loads, nothing stored).

Chromium is Debian's ``chromium`` package, installed by ``.ci/run``; without it this
test fails rather than skips, so that CI can never silently lose it. Point
``PIXEL_WSGI_CHROMIUM`` at another binary to use that one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from werkzeug.wrappers import Response

from pixel_wsgi import PixelApp, PixelMiddleware

from .support.servers import serve_in_thread

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # nothing but the page's own requests
    "--disable-component-update",
    "--disable-sync",
]

PAGE = """<!doctype html>
<html><head><title>waiting</title></head><body>
<img id="good" alt="" src="/pixel/v1/track?writeKey=strict-key&amp;anonymousId=browser-1&amp;event=Browser%20Test">
<img id="broken" alt="" src="/pixel/v1/track?writeKey=strict-key&amp;anonymousId=browser-1">
<img id="masked" alt="" src="/pixel/v1/track?writeKey=email-key&amp;anonymousId=browser-1">
<script>
  var results = {};
  function report(img, value) {
    results[img.id] = value;
    if (Object.keys(results).length === 3) {
      document.title = ["good", "broken", "masked"].map(function (id) { return id + "=" + results[id]; }).join(" ");
    }
  }
  Array.prototype.forEach.call(document.images, function (img) {
    if (img.complete) { report(img, img.naturalWidth || "error"); return; }
    img.onload = function () { report(img, img.naturalWidth); };
    img.onerror = function () { report(img, "error"); };
  });
</script>
</body></html>
"""


def chromium() -> str:
    binary = os.environ.get("PIXEL_WSGI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        pytest.fail("Chromium is missing: `apt-get install chromium` (as .ci/run does) or set PIXEL_WSGI_CHROMIUM")
    return binary


def page(environ, start_response):
    return Response(PAGE, content_type="text/html; charset=utf-8")(environ, start_response)


@pytest.mark.slow
def test_a_browser_loads_the_pixel_and_the_event_is_stored(tmp_path):
    pixel = PixelApp(
        {
            "sources": [
                {"name": "site", "write_key": "strict-key"},
                {"name": "email", "write_key": "email-key", "errors_as_pixel": True},
            ],
            "destinations": {"memory": {"type": "memory"}},
        }
    )
    events = pixel.destination("memory").events
    with serve_in_thread(PixelMiddleware(page, pixel)) as base_url:
        result = subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", base_url + "/"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    pixel.close()
    title = re.search(r"<title>(.*?)</title>", result.stdout)
    assert title, f"no DOM from Chromium (exit {result.returncode}):\n{result.stderr[-2000:]}"
    assert title.group(1) == "good=1 broken=error masked=1"
    [event] = events
    assert (event["event"], event["anonymousId"]) == ("Browser Test", "browser-1")
    assert "Chrome" in event["context"]["userAgent"]
