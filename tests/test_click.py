"""``{prefix}/click``: a track event and a 302, only to signed or allow-listed targets."""

from __future__ import annotations

import logging
from urllib.parse import quote, urlsplit

import pytest
from webtest import TestApp

from pixel_wsgi import PixelApp, pixel_url
from pixel_wsgi.testing import memory_app

from .support.wsgi import call_wsgi

WRITE_KEY = "test-write-key"
SECRET = "click-secret-0123456789"
CLICK = "/pixel/v1/click?writeKey=test-write-key&userId=reader-1&url="
NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache", "Expires": "0"}


@pytest.fixture
def allow_listed():
    app, events = memory_app(redirect_hosts=["example.com", "*.shop.example.org"])
    yield TestApp(app), events
    app.close()


def click(client, target: str, *, status: int = 302, extra: str = ""):
    return client.get(CLICK + quote(target, safe="") + extra, status=status)


# -- the redirect and the event ------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "https://example.com/spring?utm_source=email&utm_medium=newsletter",
        "http://example.com",
        "https://EXAMPLE.com./path",
        "https://example.com:8443/x#section",
        "https://www.shop.example.org/cart",
        "https://a.b.shop.example.org/",
    ],
)
def test_a_click_to_an_allowed_host_records_and_redirects(allow_listed, target):
    client, events = allow_listed
    response = click(client, target)
    assert response.headers["Location"] == target
    for name, value in NO_CACHE.items():
        assert response.headers[name] == value
    assert response.body == b""
    [event] = events
    assert event["type"] == "track"
    assert event["event"] == "Link Clicked"
    assert event["properties"] == {"url": target}
    assert event["userId"] == "reader-1"


def test_the_event_name_and_properties_can_be_given(allow_listed):
    client, events = allow_listed
    click(client, "https://example.com/a", extra="&event=CTA%20Clicked&properties.campaign=spring&properties.url=https://evil.com")
    assert events[0]["event"] == "CTA Clicked"
    # properties.url is the target the person was sent to, whatever the query says.
    assert events[0]["properties"] == {"campaign": "spring", "url": "https://example.com/a"}


def test_a_non_ascii_target_is_sent_percent_encoded(allow_listed):
    client, events = allow_listed
    response = click(client, "https://example.com/café?q=ü")
    assert response.headers["Location"] == "https://example.com/caf%C3%A9?q=%C3%BC"
    assert events[0]["properties"]["url"] == "https://example.com/café?q=ü"


def test_head_answers_the_redirect_and_records_nothing(allow_listed):
    client, events = allow_listed
    response = client.head(CLICK + quote("https://example.com/a", safe=""), status=302)
    assert response.headers["Location"] == "https://example.com/a"
    assert events == []
    # HEAD is no way around the allow-list.
    client.head(CLICK + quote("https://evil.com/", safe=""), status=400)


def test_other_methods_are_refused(allow_listed):
    client, _ = allow_listed
    response = client.post(CLICK + "https://example.com/", status=405)
    assert response.headers["Allow"] == "GET, HEAD"


# -- never an open redirect -----------------------------------------------------------------

OPEN_REDIRECTS = [
    pytest.param("https://evil.com/", id="other-host"),
    pytest.param("https://example.com.evil.com/", id="suffix-trick"),
    pytest.param("https://evilexample.com/", id="no-dot-before-allowed-host"),
    pytest.param("https://shop.example.org/", id="wildcard-is-subdomains-only"),
    pytest.param("//evil.com/", id="scheme-relative"),
    pytest.param("///evil.com/", id="triple-slash"),
    pytest.param("/\\evil.com", id="slash-backslash"),
    pytest.param("https:evil.com", id="scheme-without-slashes"),
    pytest.param("https:/evil.com", id="scheme-one-slash"),
    pytest.param("https:\\\\evil.com", id="scheme-backslashes"),
    pytest.param("https://example.com\\@evil.com", id="backslash-at"),
    pytest.param("https://example.com\\.evil.com", id="backslash-in-host"),
    pytest.param("https://example.com@evil.com", id="userinfo"),
    pytest.param("https://example.com:443@evil.com/", id="userinfo-with-port"),
    pytest.param("https://user:pass@example.com/", id="userinfo-on-allowed-host"),
    pytest.param("https://example.com%2F@evil.com", id="encoded-slash-userinfo"),
    pytest.param("https://evil.com#@example.com", id="fragment-at"),
    pytest.param("https://evil.com?@example.com", id="query-at"),
    pytest.param("https://evil.com/example.com", id="allowed-host-in-path"),
    pytest.param("javascript:alert(document.domain)//example.com", id="javascript"),
    pytest.param("JaVaScRiPt:alert(1)", id="javascript-mixed-case"),
    pytest.param("java\tscript:alert(1)", id="javascript-with-tab"),
    pytest.param("data:text/html,<script>alert(1)</script>", id="data"),
    pytest.param("ftp://example.com/", id="ftp"),
    pytest.param("https%3A%2F%2Fevil.com", id="encoded-scheme"),
    pytest.param("%68ttps://example.com/", id="encoded-scheme-letter"),
    pytest.param("https://ex%61mple.com/", id="encoded-host"),
    pytest.param("https://example.com\t.evil.com/", id="tab-in-host"),
    pytest.param("https://example.com/\r\nSet-Cookie: a=b", id="crlf-header-injection"),
    pytest.param("https://example.com/\n", id="newline"),
    pytest.param(" https://example.com/", id="leading-space"),
    pytest.param("https://example.com\u3002evil.com/", id="ideographic-full-stop"),
    pytest.param("https://exa\u200bmple.com/", id="zero-width-space"),
    pytest.param("https://[::1]/", id="ipv6-literal-not-listed"),
    pytest.param("https://example.com:99999/", id="port-out-of-range"),
    pytest.param("https://example.com:0/", id="port-zero"),
    pytest.param("https://", id="no-host"),
    pytest.param("example.com", id="no-scheme"),
]


@pytest.mark.parametrize("target", OPEN_REDIRECTS)
def test_open_redirect_attempts_are_refused(allow_listed, target, caplog):
    caplog.set_level(logging.INFO, logger="pixel_wsgi")
    client, events = allow_listed
    response = click(client, target, status=400)
    assert response.text == "url: not an allowed redirect"
    assert "Location" not in response.headers
    assert events == []
    assert "url: not an allowed redirect" in caplog.text


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"https://example.com%2509.evil.com/", id="double-encoded-tab"),
        pytest.param(b"https:%2F%2Fevil.com", id="encoded-slashes"),
        pytest.param(b"https://example.com%00.evil.com/", id="nul"),
        pytest.param(b"https://example.com%C0%AE.evil.com/", id="overlong-utf8"),
        pytest.param(b"https%253A%252F%252Fevil.com", id="double-encoded-scheme"),
    ],
)
def test_raw_query_tricks_are_refused(raw):
    app, events = memory_app(redirect_hosts=["example.com"])
    response = call_wsgi(app, "/pixel/v1/click", b"writeKey=test-write-key&userId=u&url=" + raw)
    assert response.status in (400,), response.text
    assert "location" not in {name.lower() for name, _ in response.header_list}
    assert events == []


@pytest.mark.parametrize(
    ("query", "status", "reason"),
    [
        pytest.param("writeKey=test-write-key&userId=u", 400, "url: required", id="no-url"),
        pytest.param("writeKey=test-write-key&userId=u&url=", 400, "url: required", id="empty-url"),
        pytest.param(
            "writeKey=test-write-key&userId=u&url=https://example.com&url=https://evil.com", 400, "url: given more than once", id="twice"
        ),
        pytest.param("userId=u&url=https://example.com", 400, "writeKey: required", id="no-write-key"),
        pytest.param("writeKey=nope&userId=u&url=https://example.com", 401, "invalid write key", id="unknown-write-key"),
    ],
)
def test_a_click_that_cannot_be_checked_is_an_error_not_a_redirect(query, status, reason):
    # errors_as_pixel does not apply: a person clicked, a GIF would be a blank page.
    app, _ = memory_app(redirect_hosts=["example.com"], errors_as_pixel=True)
    response = TestApp(app).get("/pixel/v1/click?" + query, status=status)
    assert response.text.startswith(reason)
    assert "Location" not in response.headers


def test_no_redirect_hosts_means_only_signed_clicks():
    app, events = memory_app()
    click(TestApp(app), "https://example.com/", status=400)
    assert events == []


# -- signed clicks ------------------------------------------------------------------------


def signed_click(target: str, secret: str = SECRET, **options) -> str:
    url = pixel_url("http://px.example.com/pixel/v1", WRITE_KEY, "click", url=target, user_id="reader-1", signing_secret=secret, **options)
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_a_signed_click_may_go_to_any_http_host():
    app, events = memory_app(signing_secrets=[SECRET])
    response = TestApp(app).get(signed_click("https://partner.example.net/offer?id=7"), status=302)
    assert response.headers["Location"] == "https://partner.example.net/offer?id=7"
    assert events[0]["properties"]["url"] == "https://partner.example.net/offer?id=7"


def test_a_signed_click_with_a_swapped_target_is_refused():
    app, events = memory_app(signing_secrets=[SECRET])
    path = signed_click("https://partner.example.net/")
    forged = path.replace(quote("https://partner.example.net/", safe=""), quote("https://evil.com/", safe=""))
    assert forged != path
    response = TestApp(app).get(forged, status=403)
    assert response.text == "invalid signature"
    assert events == []


def test_a_signature_does_not_make_a_bad_url_acceptable():
    app, _ = memory_app(signing_secrets=[SECRET])
    pairs = [("writeKey", WRITE_KEY), ("userId", "u"), ("url", "javascript:alert(1)")]
    from pixel_wsgi.signing import sign

    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in pairs) + "&sig=" + sign(pairs, SECRET)
    TestApp(app).get("/pixel/v1/click?" + query, status=400)


def test_an_expired_signed_click_is_refused():
    app, _ = memory_app(signing_secrets=[SECRET])
    response = TestApp(app).get(signed_click("https://example.com/", expires_in=-1), status=403)
    assert response.text == "signature expired"


@pytest.mark.parametrize("target", ["javascript:alert(1)", "//evil.com", "https://a@evil.com", "https://example.com/ x", None])
def test_pixel_url_refuses_a_click_target_the_server_would_refuse(target):
    with pytest.raises(ValueError, match="url must be an absolute http or https URL"):
        pixel_url("http://px.example.com/pixel/v1", WRITE_KEY, "click", url=target, user_id="u")


def test_pixel_url_builds_an_unsigned_click_for_an_allow_listed_host():
    url = pixel_url("http://px.example.com/pixel/v1", WRITE_KEY, "click", url="https://example.com/a?b=1&c=2", user_id="u", event="CTA")
    assert url.startswith("http://px.example.com/pixel/v1/click?writeKey=test-write-key&url=https%3A%2F%2Fexample.com%2Fa%3Fb%3D1%26c%3D2")
    app, events = memory_app(redirect_hosts=["example.com"])
    response = TestApp(app).get(url[len("http://px.example.com") :], status=302)
    assert response.headers["Location"] == "https://example.com/a?b=1&c=2"
    assert events[0]["event"] == "CTA"


# -- the person is redirected whatever happens to the event -----------------------------------


def test_a_lost_click_event_still_redirects_and_logs_an_error(tmp_path, caplog):
    """The destination is down and the spool cannot be written: a pixel would be a 503,
    a click still takes the person where the link said."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    app = PixelApp(
        {
            "sources": [{"name": "mail", "write_key": WRITE_KEY, "redirect_hosts": ["example.com"]}],
            "destinations": {"down": {"type": "webhook", "url": "http://127.0.0.1:9/hook", "timeout": 0.2, "retries": 0}},
            "spool": {"path": str(tmp_path / "spool.sqlite3")},
            "dispatch": {"budget": 0.5},
        }
    )
    app.spool.path = str(blocked / "spool.sqlite3")  # the disk went away after start-up
    try:
        response = click(TestApp(app), "https://example.com/a")
    finally:
        app.close()
    assert response.headers["Location"] == "https://example.com/a"
    errors = [record for record in caplog.records if record.levelno == logging.ERROR and "click event lost" in record.getMessage()]
    assert errors, caplog.text


def test_a_click_with_a_bad_event_still_redirects_and_logs_why(allow_listed, caplog):
    caplog.set_level(logging.INFO, logger="pixel_wsgi")
    client, events = allow_listed
    response = client.get("/pixel/v1/click?writeKey=test-write-key&url=https%3A%2F%2Fexample.com%2F", status=302)
    assert response.headers["Location"] == "https://example.com/"
    assert response.headers["X-Pixel-Error"].startswith("anonymousId")
    assert events == []
    assert "click redirected, event not recorded: anonymousId" in caplog.text


def test_machine_clicks_are_dropped_but_redirected():
    app, events = memory_app(redirect_hosts=["example.com"], machine_opens="drop")
    client = TestApp(app)
    response = client.get(
        CLICK + quote("https://example.com/", safe=""),
        extra_environ={"HTTP_USER_AGENT": "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))"},
        status=302,
    )
    assert response.headers["Location"] == "https://example.com/"
    assert events == []


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        pytest.param(["*.com"], "a wildcard needs a domain of two labels or more", id="tld-wildcard"),
        pytest.param(["*"], "not a host name or *.domain", id="star"),
        pytest.param(["example.com:443"], "not a host name or *.domain", id="port"),
        pytest.param(["https://example.com"], "not a host name or *.domain", id="url"),
        pytest.param(["ex*.com"], "not a host name or *.domain", id="inner-star"),
        pytest.param(["example.com/path"], "not a host name or *.domain", id="path"),
        pytest.param("example.com", "must be a list of strings", id="not-a-list"),
    ],
)
def test_redirect_hosts_are_checked_at_start_up(hosts, message):
    from pixel_wsgi.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        memory_app(redirect_hosts=hosts)
    assert "sources[0].redirect_hosts" in str(error.value) and message in str(error.value)
