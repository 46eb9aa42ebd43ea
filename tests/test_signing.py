"""Signed URLs: ``sig`` over the decoded parameters, ``exp``, rotation, and what a forger can try."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from webtest import TestApp

from pixel_wsgi import pixel_url
from pixel_wsgi.errors import ConfigError
from pixel_wsgi.responses import TRANSPARENT_GIF
from pixel_wsgi.signing import canonical_string, sign
from pixel_wsgi.testing import memory_app

WRITE_KEY = "test-write-key"
OLD_SECRET = "old-secret-0123456789abcdef"
NEW_SECRET = "new-secret-fedcba9876543210"
BASE = "http://px.example.com/pixel/v1"


def signed_url(secret: str = NEW_SECRET, **options) -> str:
    return pixel_url(
        BASE,
        WRITE_KEY,
        "track",
        event="Email Opened",
        user_id="user 42",
        properties={"campaign": "spring sale", "tags": ["b", "a"], "revenue": 9.5},
        signing_secret=secret,
        **options,
    )


def path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


@pytest.fixture
def signed_app():
    app, events = memory_app(signing_secrets=[NEW_SECRET, OLD_SECRET], require_signature=True)
    yield TestApp(app), events
    app.close()


# -- the canonical string ---------------------------------------------------------------


def test_the_canonical_string_is_what_the_docs_say():
    """A fixed vector, computed without the module, for anyone writing a signer in another language."""
    pairs = [("writeKey", "k"), ("event", "Email Opened"), ("properties.tags[]", "b"), ("properties.tags[]", "a"), ("sig", "x")]
    canonical = b"event=Email%20Opened&properties.tags%5B%5D=a&properties.tags%5B%5D=b&writeKey=k"
    assert canonical_string(pairs) == canonical
    assert sign(pairs, "a-secret-of-16-chars") == hmac.new(b"a-secret-of-16-chars", canonical, hashlib.sha256).hexdigest()


def test_the_canonical_string_cannot_be_made_ambiguous():
    """A value holding '=' or '&' cannot pass for two parameters."""
    assert canonical_string([("a", "1&b=2")]) != canonical_string([("a", "1"), ("b", "2")])
    assert canonical_string([("a", "x\x00b")]) != canonical_string([("a", "x"), ("b", "")])


# -- accepted --------------------------------------------------------------------------


def test_a_url_signed_by_pixel_url_is_accepted(signed_app):
    client, events = signed_app
    client.get(path_and_query(signed_url()))
    assert events[0]["userId"] == "user 42"
    assert events[0]["properties"] == {"campaign": "spring sale", "tags": ["b", "a"], "revenue": 9.5}
    assert "sig" not in events[0] and "exp" not in events[0]


def rewrite(url: str, how: str) -> str:
    """The same parameters as a mail client, a redirector or a proxy may re-encode them."""
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    path = urlsplit(url).path
    if how == "plus-for-space":
        query = "&".join(f"{quote(k, safe='[]')}={quote(v, safe='').replace('%20', '+')}" for k, v in pairs)
    elif how == "encode-everything":
        query = "&".join("".join(f"%{b:02x}" for b in k.encode()) + "=" + "".join(f"%{b:02X}" for b in v.encode()) for k, v in pairs)
    elif how == "reordered":
        query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in reversed(pairs))
    elif how == "raw-brackets-and-spaces-as-%20":
        query = "&".join(f"{k.replace(' ', '%20')}={quote(v, safe=':/')}" for k, v in pairs)
    else:
        raise AssertionError(how)
    return f"{path}?{query}"


@pytest.mark.parametrize("how", ["plus-for-space", "encode-everything", "reordered", "raw-brackets-and-spaces-as-%20"])
def test_re_encoding_the_url_keeps_the_signature_valid(signed_app, how):
    client, events = signed_app
    client.get(rewrite(signed_url(), how))
    assert events[0]["properties"]["campaign"] == "spring sale"


def test_rotation_accepts_every_listed_secret(signed_app):
    client, events = signed_app
    client.get(path_and_query(signed_url(OLD_SECRET)))
    client.get(path_and_query(signed_url(NEW_SECRET)))
    assert len(events) == 2


def test_a_secret_rotated_out_is_refused():
    app, events = memory_app(signing_secrets=[NEW_SECRET], require_signature=True)
    response = TestApp(app).get(path_and_query(signed_url(OLD_SECRET)), status=403)
    assert response.text == "invalid signature"
    assert events == []


def test_an_expiry_in_the_future_is_accepted(signed_app):
    client, events = signed_app
    client.get(path_and_query(signed_url(expires_in=3600)))
    assert len(events) == 1


# -- refused ---------------------------------------------------------------------------


def tamper(url: str, name: str, value: str | None) -> str:
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    if value is None:
        pairs = [(k, v) for k, v in pairs if k != name]
    elif any(k == name for k, _ in pairs):
        pairs = [(k, value if k == name else v) for k, v in pairs]
    else:
        pairs.append((name, value))
    return urlsplit(url).path + "?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in pairs)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        pytest.param(lambda url: tamper(url, "userId", "someone else"), "invalid signature", id="changed-value"),
        pytest.param(lambda url: tamper(url, "properties.coupon", "FREE"), "invalid signature", id="added-parameter"),
        pytest.param(lambda url: tamper(url, "properties.campaign", None), "invalid signature", id="removed-parameter"),
        pytest.param(lambda url: tamper(url, "event", "Order Completed"), "invalid signature", id="changed-event"),
        pytest.param(lambda url: tamper(url, "sig", "0" * 64), "invalid signature", id="zero-sig"),
        pytest.param(lambda url: tamper(url, "sig", "abc"), "invalid signature", id="short-sig"),
        pytest.param(lambda url: tamper(url, "sig", "é" * 64), "invalid signature", id="non-ascii-sig"),
        pytest.param(lambda url: tamper(url, "sig", None), "invalid signature", id="missing-sig"),
        pytest.param(lambda url: url + "&sig=" + "0" * 64, "invalid signature", id="sig-twice"),
        pytest.param(lambda url: tamper(url, "exp", str(int(time.time()) + 86400 * 365)), "invalid signature", id="unsigned-exp-added"),
    ],
)
def test_tampered_urls_are_refused(signed_app, mutate, reason):
    client, events = signed_app
    response = client.get(mutate(path_and_query(signed_url())), status=403)
    assert response.text == reason
    assert events == []


def test_an_extended_expiry_is_refused(signed_app):
    client, events = signed_app
    url = path_and_query(signed_url(expires_in=60))
    response = client.get(tamper(url, "exp", str(int(time.time()) + 86400)), status=403)
    assert response.text == "invalid signature"


def test_an_expired_signature_is_refused_as_expired(signed_app, caplog):
    caplog.set_level("INFO", logger="pixel_wsgi")
    client, events = signed_app
    response = client.get(path_and_query(signed_url(expires_in=-5)), status=403)
    assert response.text == "signature expired"
    assert events == []
    assert "signature expired" in caplog.text


def test_a_signed_exp_that_is_not_unix_seconds_is_a_400():
    app, events = memory_app(signing_secrets=[NEW_SECRET])
    pairs = [("writeKey", WRITE_KEY), ("anonymousId", "a"), ("event", "x"), ("exp", "tomorrow")]
    query = "&".join(f"{k}={v}" for k, v in pairs) + "&sig=" + sign(pairs, NEW_SECRET)
    response = TestApp(app).get("/pixel/v1/track?" + query, status=400)
    assert response.text == "exp: must be a time in Unix seconds"


def test_errors_as_pixel_answers_a_bad_signature_with_the_gif():
    app, events = memory_app(signing_secrets=[NEW_SECRET], require_signature=True, errors_as_pixel=True)
    response = TestApp(app).get(path_and_query(signed_url(OLD_SECRET)))
    assert response.body == TRANSPARENT_GIF
    assert response.headers["X-Pixel-Error"] == "invalid signature"
    assert events == []


# -- optional signatures and the other options -------------------------------------------


def test_unsigned_urls_pass_when_a_signature_is_not_required_but_bad_ones_do_not():
    app, events = memory_app(signing_secrets=[NEW_SECRET])
    client = TestApp(app)
    client.get("/pixel/v1/track?writeKey=test-write-key&anonymousId=a&event=Opened")
    client.get(tamper(path_and_query(signed_url()), "userId", "forged"), status=403)
    assert len(events) == 1


def test_a_source_without_secrets_ignores_sig_and_exp():
    app, events = memory_app()
    TestApp(app).get("/pixel/v1/track?writeKey=test-write-key&anonymousId=a&event=Opened&sig=whatever&exp=1")
    assert len(events) == 1 and "sig" not in events[0] and "exp" not in events[0]


@pytest.mark.parametrize("mode", ["reject", "keep", "ignore"])
def test_sig_and_exp_are_never_unknown_parameters(mode):
    app, events = memory_app(signing_secrets=[NEW_SECRET], require_signature=True, unknown_params=mode)
    TestApp(app).get(path_and_query(signed_url(expires_in=600)))
    assert "sig" not in events[0] and "exp" not in events[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"require_signature": True}, "sources[0].require_signature: needs signing_secrets", id="required-without-secrets"),
        pytest.param({"signing_secrets": ["short"]}, "sources[0].signing_secrets[0]: must be at least 16 characters", id="short-secret"),
        pytest.param({"signing_secrets": "one-secret-only-16+"}, "sources[0].signing_secrets: must be a list of strings", id="not-a-list"),
    ],
)
def test_signing_options_are_checked_at_start_up(options, message):
    with pytest.raises(ConfigError) as error:
        memory_app(**options)
    assert message in str(error.value)


def test_pixel_url_refuses_an_expiry_without_a_secret():
    with pytest.raises(ValueError, match="expires_in needs signing_secret"):
        pixel_url(BASE, WRITE_KEY, "track", event="x", user_id="u", expires_in=60)
    with pytest.raises(ValueError, match="sig cannot be set"):
        pixel_url(BASE, WRITE_KEY, "track", event="x", user_id="u", sig="abc")
