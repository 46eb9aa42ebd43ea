"""The fields the server adds: ids, times, channel, context.ip, userAgent, library."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from webtest import TestApp

from pixel_wsgi import __version__
from pixel_wsgi.event import anonymize_ip, utc_timestamp
from pixel_wsgi.testing import memory_app
from tests.conftest import WRITE_KEY

BASE = f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=a&event=E"


def test_message_ids_are_new_uuid4_strings(client, events):
    client.get(BASE)
    client.get(BASE)
    first, second = (event["messageId"] for event in events)
    assert first != second
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", first)


def test_received_at_is_server_time_in_utc_milliseconds(client, events):
    before = datetime.now(timezone.utc)
    client.get(BASE + "&receivedAt=1999-01-01T00:00:00.000Z")
    after = datetime.now(timezone.utc)
    received = datetime.strptime(events[0]["receivedAt"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= received <= after


def test_utc_timestamp_format():
    assert utc_timestamp(0.5) == "1970-01-01T00:00:00.500Z"
    assert utc_timestamp(1706702400.123456) == "2024-01-31T12:00:00.123Z"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({"HTTP_USER_AGENT": "Mail/1.0"}, "Mail/1.0", id="from-header"),
        pytest.param({}, None, id="absent"),
    ],
)
def test_user_agent_from_header(client, events, environ, expected):
    client.get(BASE, headers={"User-Agent": expected} if expected else {})
    assert events[0]["context"].get("userAgent") == expected


def test_user_agent_parameter_wins_over_header(client, events):
    client.get(BASE + "&context.userAgent=AMP", headers={"User-Agent": "Mail/1.0"})
    assert events[0]["context"]["userAgent"] == "AMP"


def test_library_added_when_absent(client, events):
    client.get(BASE)
    assert events[0]["context"]["library"] == {"name": "pixel-wsgi", "version": __version__}


@pytest.mark.parametrize(
    ("trusted", "ip_mode", "remote", "forwarded", "expected"),
    [
        pytest.param(0, "full", "10.0.0.1", None, "10.0.0.1", id="remote-addr"),
        pytest.param(0, "full", "10.0.0.1", "203.0.113.5", "10.0.0.1", id="forwarded-untrusted-ignored"),
        pytest.param(1, "full", "10.0.0.1", "203.0.113.5", "203.0.113.5", id="one-trusted-hop"),
        pytest.param(1, "full", "10.0.0.1", "6.6.6.6, 203.0.113.5", "203.0.113.5", id="client-spoof-left-of-proxy-ignored"),
        pytest.param(2, "full", "10.0.0.1", "6.6.6.6, 203.0.113.5, 10.0.0.2", "203.0.113.5", id="two-trusted-hops"),
        pytest.param(2, "full", "10.0.0.1", "203.0.113.5", "10.0.0.1", id="fewer-hops-than-trusted"),
        pytest.param(1, "full", "10.0.0.1", "not-an-ip", "10.0.0.1", id="garbage-forwarded"),
        pytest.param(0, "anonymize", "203.0.113.77", None, "203.0.113.0", id="anonymize-ipv4"),
        pytest.param(0, "anonymize", "2001:db8:1234:5678:9abc:def0:1234:5678", None, "2001:db8:1234::", id="anonymize-ipv6"),
        pytest.param(1, "anonymize", "10.0.0.1", "198.51.100.99", "198.51.100.0", id="anonymize-forwarded"),
        pytest.param(0, "drop", "203.0.113.77", None, None, id="drop"),
    ],
)
def test_context_ip(trusted, ip_mode, remote, forwarded, expected):
    app, events = memory_app(WRITE_KEY, trusted_proxies=trusted, ip=ip_mode)
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    TestApp(app).get(BASE + "&context.ip=1.2.3.4", headers=headers, extra_environ={"REMOTE_ADDR": remote})
    assert events[0]["context"].get("ip") == expected


def test_anonymize_ip_ignores_garbage():
    assert anonymize_ip("nope") is None


def test_channel_defaults_to_web(client, events):
    client.get(BASE)
    assert events[0]["channel"] == "web"


def test_integrations_cannot_be_selected(client, events):
    client.get(BASE + "&integrations.All=false&integrations.Mixpanel=true")
    assert events[0]["integrations"] == {"All": True}
