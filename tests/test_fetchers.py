"""Who fetched an email's pixel: mail proxies, Apple's prefetcher, bots, or a person.

The user agents are the real strings these programs send. What the user-agent
database (crawlerdetect) says about each mail client is pinned here, because it is
the reason for ``MAIL_CLIENT_PATTERNS``: crawlerdetect lists Outlook as a crawler.
"""

from __future__ import annotations

import re

import pytest
from crawlerdetect import CrawlerDetect
from webtest import TestApp

from pixel_wsgi import PixelApp
from pixel_wsgi.errors import ConfigError
from pixel_wsgi.fetchers import USER_AGENT_CACHE_SIZE, FetcherClassifier, is_bot_user_agent
from pixel_wsgi.observer import Observer
from pixel_wsgi.testing import memory_app

GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
YAHOO = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
APPLE_PREFETCH = "Mozilla/5.0"
OUTLOOK_DESKTOP = (
    "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 10.0; WOW64; Trident/7.0; .NET4.0C; .NET4.0E; .NET CLR 2.0.50727; "
    ".NET CLR 3.0.30729; .NET CLR 3.5.30729; Microsoft Outlook 16.0.5095; Microsoft Outlook 16.0.5095; ms-office; MSOffice 16)"
)
# Outlook for Windows' image fetches (found by a fresh-eyes attack: crawlerdetect's
# "Microsoft Office" pattern flagged them as a bot).
OUTLOOK_OFFICE_16 = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17425; Pro)"
OUTLOOK_OFFICE_15 = "Microsoft Office/15.0 (Windows NT 6.1; Microsoft Outlook 15.0.5023; Pro)"
OUTLOOK_MAC = "MacOutlook/16.80.23121017 (Intel Mac OS X 14.2)"
OUTLOOK_IOS = "Outlook-iOS/709.2189947.prod.iphone (3.24.1)"
APPLE_MAIL_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
APPLE_MAIL_IOS = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0"
CHROME_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
EDGE = CHROME_WINDOWS + " Edg/120.0.0.0"
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0"
SAFARI_IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36"
)

PEOPLE = [
    pytest.param(OUTLOOK_DESKTOP, id="outlook-desktop"),
    pytest.param(OUTLOOK_OFFICE_16, id="outlook-office-16"),
    pytest.param(OUTLOOK_OFFICE_15, id="outlook-office-15"),
    pytest.param(OUTLOOK_MAC, id="outlook-mac"),
    pytest.param(OUTLOOK_IOS, id="outlook-ios"),
    pytest.param(APPLE_MAIL_MAC, id="apple-mail-mac"),
    pytest.param(APPLE_MAIL_IOS, id="apple-mail-ios"),
    pytest.param(THUNDERBIRD, id="thunderbird"),
    pytest.param(CHROME_WINDOWS, id="chrome"),
    pytest.param(EDGE, id="edge"),
    pytest.param(FIREFOX, id="firefox"),
    pytest.param(SAFARI_IPHONE, id="safari-iphone"),
    pytest.param(CHROME_ANDROID, id="chrome-android"),
]

BOTS = [
    pytest.param("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", id="googlebot"),
    pytest.param("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", id="bingbot"),
    pytest.param("Mozilla/5.0 (compatible; Barracuda Sentinel (EE))", id="barracuda-mail-scanner"),
    pytest.param("Microsoft Office Existence Discovery", id="office-link-probe"),
    pytest.param("Microsoft Office Protocol Discovery", id="office-protocol-probe"),
    pytest.param("Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5", id="skype-link-preview"),
    pytest.param("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", id="slack-unfurl"),
    pytest.param("LinkChecker/10.2.1 (+https://linkchecker.github.io/linkchecker/)", id="linkchecker"),
    pytest.param("W3C-checklink/4.81 libwww-perl/6.72", id="w3c-checklink"),
    pytest.param(
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
        id="headless-chrome",
    ),
    pytest.param("curl/8.4.0", id="curl"),
    pytest.param("python-requests/2.31.0", id="python-requests"),
    pytest.param("facebookexternalhit/1.1", id="facebook"),
]


def classify(user_agent: str, address: str = "203.0.113.7"):
    return FetcherClassifier().classify(user_agent, address)


# -- the classifier ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_agent", "address", "name", "machine"),
    [
        pytest.param(GMAIL, "66.249.84.1", "gmail-image-proxy", False, id="gmail"),
        pytest.param(YAHOO, "98.136.1.1", "yahoo-mail-proxy", False, id="yahoo"),
        pytest.param(APPLE_PREFETCH, "17.58.96.10", "apple-mail-privacy-protection", True, id="apple-17/8"),
        pytest.param(APPLE_PREFETCH, "::ffff:17.58.96.10", "apple-mail-privacy-protection", True, id="apple-ipv4-mapped"),
    ],
)
def test_mail_proxies_and_apples_prefetcher(user_agent, address, name, machine):
    fetcher = classify(user_agent, address)
    assert fetcher is not None
    assert fetcher.context == {"fetcher": name, "machine": machine}


@pytest.mark.parametrize("address", ["203.0.113.7", "18.0.0.1", "16.255.255.255", "2001:db8::17", None, "not-an-ip"])
def test_the_bare_user_agent_outside_apples_network_is_nobody_in_particular(address):
    assert classify(APPLE_PREFETCH, address) is None


def test_apple_mail_itself_from_apples_network_is_a_person():
    """Only the bare ``Mozilla/5.0`` is the prefetcher; a full Apple Mail user agent is a reader."""
    assert classify(APPLE_MAIL_MAC, "17.1.2.3") is None


@pytest.mark.parametrize("user_agent", PEOPLE)
def test_browsers_and_mail_clients_are_people(user_agent):
    assert classify(user_agent) is None


@pytest.mark.parametrize("user_agent", BOTS)
def test_crawlers_link_checkers_and_scanners_are_bots(user_agent):
    assert classify(user_agent) == FetcherClassifier().classify(user_agent, None)
    fetcher = classify(user_agent)
    assert fetcher is not None and fetcher.context == {"fetcher": "bot", "machine": True}


@pytest.mark.parametrize(
    ("user_agent", "database_says_crawler"),
    [
        pytest.param(OUTLOOK_DESKTOP, True, id="outlook-desktop"),
        pytest.param(OUTLOOK_MAC, True, id="outlook-mac"),
        pytest.param(OUTLOOK_IOS, True, id="outlook-ios"),
        pytest.param(GMAIL, True, id="gmail-proxy"),
        pytest.param(YAHOO, True, id="yahoo-proxy"),
        pytest.param(APPLE_MAIL_MAC, False, id="apple-mail"),
        pytest.param(THUNDERBIRD, False, id="thunderbird"),
    ],
)
def test_what_the_database_says_about_mail_clients(user_agent, database_says_crawler):
    """crawlerdetect is written for web sites: it calls Outlook and the mail proxies
    crawlers. Our database path must not: Outlook is a reader, the proxies are checked
    as built-in fetchers before the database is asked."""
    assert CrawlerDetect().isCrawler(user_agent) is database_says_crawler
    assert is_bot_user_agent(user_agent) is False


def test_classification_is_cached_per_user_agent_and_bounded():
    classifier = FetcherClassifier()
    for number in range(USER_AGENT_CACHE_SIZE + 50):
        classifier.classify(f"{CHROME_WINDOWS} build/{number}", "203.0.113.7")
    info = classifier._by_user_agent.cache_info()  # type: ignore[attr-defined]
    assert info.currsize == USER_AGENT_CACHE_SIZE
    classifier.classify(GMAIL, "1.2.3.4")
    classifier.classify(GMAIL, "5.6.7.8")
    assert classifier._by_user_agent.cache_info().hits >= 1  # type: ignore[attr-defined]


def test_a_huge_user_agent_is_cut_before_matching():
    assert classify("x" * 100_000 + "Googlebot") is None  # beyond MAX_USER_AGENT_LENGTH
    assert classify("Googlebot" + "x" * 100_000) is not None


# -- configured fetchers -----------------------------------------------------------------

SCANNER_FETCHERS = [
    # A mail security gateway that fetches with an ordinary browser's user agent from
    # its own network: only the operator knows it, by its addresses.
    {"name": "acme-mail-gateway", "machine": True, "networks": ["198.51.100.0/24", "2001:db8:100::/48"]},
    {"name": "newsletter-preview", "machine": True, "user_agent": r"PreviewBot/\d"},
    # An operator who wants Outlook's desktop opens labelled (a person: not a machine).
    {"name": "outlook", "machine": False, "user_agent": "Microsoft Outlook"},
]


@pytest.mark.parametrize(
    ("user_agent", "address", "expected"),
    [
        pytest.param(CHROME_WINDOWS, "198.51.100.20", {"fetcher": "acme-mail-gateway", "machine": True}, id="network-v4"),
        pytest.param(CHROME_WINDOWS, "2001:db8:100::5", {"fetcher": "acme-mail-gateway", "machine": True}, id="network-v6"),
        pytest.param(
            "PreviewBot/2 (+https://example.com)", "203.0.113.7", {"fetcher": "newsletter-preview", "machine": True}, id="ua-regex"
        ),
        pytest.param(OUTLOOK_DESKTOP, "203.0.113.7", {"fetcher": "outlook", "machine": False}, id="labels-a-person"),
        pytest.param(GMAIL, "198.51.100.20", {"fetcher": "acme-mail-gateway", "machine": True}, id="configured-first"),
        pytest.param(CHROME_WINDOWS, "198.51.101.20", None, id="outside-the-network"),
    ],
)
def test_configured_fetchers_come_before_the_built_in_ones(user_agent, address, expected):
    app, events = memory_app(fetchers=SCANNER_FETCHERS)
    TestApp(app).get(
        "/pixel/v1/track?writeKey=test-write-key&anonymousId=a&event=Email%20Opened",
        extra_environ={"HTTP_USER_AGENT": user_agent, "REMOTE_ADDR": address},
    )
    assert events[0]["context"].get("pixel") == expected


@pytest.mark.parametrize(
    ("fetchers", "message"),
    [
        pytest.param([{"name": "x", "user_agent": "("}], "fetchers[0].user_agent: not a regular expression", id="bad-regex"),
        pytest.param(
            [{"name": "x", "networks": ["17.0.0.0/33"]}], "fetchers[0].networks[0]: not an IP address or CIDR network", id="bad-cidr"
        ),
        pytest.param([{"name": "x"}], "fetchers[0]: needs user_agent, networks or both", id="matches-everything"),
        pytest.param([{"user_agent": "x"}], "fetchers[0].name: required", id="no-name"),
        pytest.param([{"name": "x", "user_agent": "x", "machin": True}], "fetchers[0].machin: unknown option", id="typo"),
        pytest.param([{"name": "x", "user_agent": "x", "machine": "yes"}], "fetchers[0].machine: must be true or false", id="not-bool"),
        pytest.param({"name": "x"}, "fetchers: must be a list", id="not-a-list"),
    ],
)
def test_fetchers_are_checked_at_start_up(fetchers, message):
    with pytest.raises(ConfigError) as error:
        memory_app(fetchers=fetchers)
    assert message in str(error.value)


# -- in the app -----------------------------------------------------------------------


def open_pixel(client, user_agent, *, address="203.0.113.7", query="", **environ):
    return client.get(
        "/pixel/v1/track?writeKey=test-write-key&anonymousId=reader-1&event=Email%20Opened" + query,
        extra_environ={"HTTP_USER_AGENT": user_agent, "REMOTE_ADDR": address, **environ},
    )


@pytest.mark.parametrize(
    ("user_agent", "address", "expected"),
    [
        pytest.param(GMAIL, "66.249.84.1", {"fetcher": "gmail-image-proxy", "machine": False}, id="gmail"),
        pytest.param(YAHOO, "98.136.1.1", {"fetcher": "yahoo-mail-proxy", "machine": False}, id="yahoo"),
        pytest.param(APPLE_PREFETCH, "17.58.96.10", {"fetcher": "apple-mail-privacy-protection", "machine": True}, id="apple"),
        pytest.param("Mozilla/5.0 (compatible; Barracuda Sentinel (EE))", "203.0.113.7", {"fetcher": "bot", "machine": True}, id="scanner"),
        pytest.param(OUTLOOK_DESKTOP, "203.0.113.7", None, id="outlook"),
        pytest.param(THUNDERBIRD, "203.0.113.7", None, id="thunderbird"),
    ],
)
def test_events_say_who_fetched_them(user_agent, address, expected):
    app, events = memory_app()
    open_pixel(TestApp(app), user_agent, address=address)
    assert events[0]["context"].get("pixel") == expected


def test_apples_prefetcher_behind_a_trusted_proxy_is_found_by_the_forwarded_address():
    app, events = memory_app(trusted_proxies=1)
    client = TestApp(app)
    open_pixel(client, APPLE_PREFETCH, address="10.0.0.2", HTTP_X_FORWARDED_FOR="17.58.96.10")
    # Only the trusted hop counts: a client's own X-Forwarded-For entry further left does not.
    open_pixel(client, APPLE_PREFETCH, address="10.0.0.2", HTTP_X_FORWARDED_FOR="17.58.96.10, 203.0.113.7")
    assert events[0]["context"]["pixel"]["fetcher"] == "apple-mail-privacy-protection"
    assert "pixel" not in events[1]["context"]


def test_a_forwarded_for_header_is_ignored_without_trusted_proxies():
    """A client cannot pass for Apple's prefetcher by writing X-Forwarded-For itself."""
    app, events = memory_app()
    open_pixel(TestApp(app), APPLE_PREFETCH, address="203.0.113.7", HTTP_X_FORWARDED_FOR="17.58.96.10")
    assert "pixel" not in events[0]["context"]


def test_the_fetcher_is_found_with_ip_anonymize_and_drop():
    for mode in ("anonymize", "drop"):
        app, events = memory_app(ip=mode)
        open_pixel(TestApp(app), APPLE_PREFETCH, address="17.58.96.10")
        assert events[0]["context"]["pixel"]["fetcher"] == "apple-mail-privacy-protection"


def test_context_pixel_cannot_be_sent_by_the_client():
    app, events = memory_app()
    client = TestApp(app)
    open_pixel(client, CHROME_WINDOWS, query="&context.pixel.fetcher=gmail-image-proxy&context.pixel.machine=false")
    open_pixel(client, APPLE_PREFETCH, address="17.0.0.1", query="&context.pixel.machine=false")
    assert "pixel" not in events[0]["context"]
    assert events[1]["context"]["pixel"] == {"fetcher": "apple-mail-privacy-protection", "machine": True}


def test_machine_opens_drop_answers_the_gif_and_delivers_nothing(caplog):
    app, events = memory_app(machine_opens="drop")
    client = TestApp(app)
    prefetch = open_pixel(client, APPLE_PREFETCH, address="17.58.96.10")
    scan = open_pixel(client, "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))")
    open_pixel(client, GMAIL, address="66.249.84.1")
    open_pixel(client, THUNDERBIRD)
    assert prefetch.status_int == scan.status_int == 200
    assert prefetch.content_type == "image/gif"
    # Gmail's proxy fetches when a person opens: a real open, flagged but kept.
    assert [event["context"].get("pixel") for event in events] == [{"fetcher": "gmail-image-proxy", "machine": False}, None]


def test_observers_see_every_classified_event_flagged_or_dropped():
    app, _ = memory_app(machine_opens="drop")
    seen = []

    class Seen(Observer):
        def machine_open(self, fetcher):
            seen.append(fetcher)

    app.observe(Seen())
    client = TestApp(app)
    open_pixel(client, APPLE_PREFETCH, address="17.58.96.10")
    open_pixel(client, GMAIL)
    open_pixel(client, FIREFOX)
    assert seen == ["apple-mail-privacy-protection", "gmail-image-proxy"]


def test_machine_opens_must_be_flag_or_drop():
    with pytest.raises(ConfigError, match=r"sources\[0\]\.machine_opens: must be one of flag, drop"):
        PixelApp({"sources": [{"name": "s", "write_key": "k", "machine_opens": "hide"}], "destinations": {"m": {"type": "memory"}}})


def test_every_mail_client_exception_is_still_in_the_database():
    """An exception the database no longer lists is dead weight; one it renamed is a
    mail client silently turned back into a bot. Either way, look again on upgrade."""
    from crawlerdetect.providers.crawlers import data

    from pixel_wsgi.fetchers import MAIL_CLIENT_PATTERNS

    assert MAIL_CLIENT_PATTERNS <= set(data)


EXTRA_USER_AGENTS = [
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "Go-http-client/1.1",
    "Wget/1.21",
    "Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1; Trident/5.0) BingPreview/1.0b",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Proofpoint",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/430.0]",
    "my-uptime-checker/2.0",
    "SuperFetcher",
    "A" * 600,
    "bo" * 300 + "bot",
]


@pytest.mark.parametrize("user_agent", [*(p.values[0] for p in PEOPLE + BOTS), GMAIL, YAHOO, APPLE_PREFETCH, *EXTRA_USER_AGENTS])
def test_our_compiled_database_answers_like_crawlerdetect(user_agent):
    """The database is compiled for speed (lower-cased, without IGNORECASE, without
    optional prefixes that make a search quadratic): outside the mail clients, it must
    still say exactly what crawlerdetect says."""
    from pixel_wsgi.fetchers import MAIL_CLIENT_PATTERNS, MAX_USER_AGENT_LENGTH

    cut = user_agent[:MAX_USER_AGENT_LENGTH]
    detector = CrawlerDetect()
    expected = detector.isCrawler(cut) and detector.getMatches() is not None
    matched_mail_client = expected and any(re.search(pattern, cut, re.IGNORECASE) for pattern in MAIL_CLIENT_PATTERNS)
    if not matched_mail_client:
        assert is_bot_user_agent(cut) is expected


def test_no_pattern_can_make_the_search_quadratic():
    """A leading ``[...]*`` makes a search over a long run of its characters quadratic."""
    from pixel_wsgi.fetchers import _bot_user_agent

    _, crawlers = _bot_user_agent()
    assert r"[a-z0-9\-_]*(bot" not in crawlers.pattern
    assert "(bot|crawl|headless" in crawlers.pattern
