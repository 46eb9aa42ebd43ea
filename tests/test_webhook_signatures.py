"""Standard Webhooks headers, verified by the ``standardwebhooks`` library as a receiver would.

The receiver is a real HTTP server on 127.0.0.1; what it got is checked with
``standardwebhooks.Webhook(secret).verify(body, headers)``, the call its users make.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from pixel_wsgi.config import build_destination
from pixel_wsgi.destinations import Destination, Payload
from pixel_wsgi.destinations.webhook import standard_signature
from pixel_wsgi.errors import ConfigError
from tests.support.sink import Reply, sink_fixture

# A secret in the Standard Webhooks form: "whsec_" and base64 of the key bytes.
KEY = b"a key of thirty-two random bytes"
WHSEC = "whsec_" + base64.b64encode(KEY).decode()


@pytest.fixture
def sink():
    yield from sink_fixture()


@pytest.fixture
def build():
    built: list[Destination] = []

    def make(**options: Any) -> Destination:
        destination = build_destination("hook", {"type": "webhook", **options})
        built.append(destination)
        return destination

    yield make
    for destination in built:
        destination.close()


def payload(message_id: str = "m-signed") -> Payload:
    return Payload({"type": "track", "messageId": message_id, "event": "Opened", "properties": {"note": "é\u2028"}}, "web")


@pytest.mark.parametrize(
    ("secret", "receiver"),
    [
        pytest.param(WHSEC, Webhook(WHSEC), id="whsec-form"),
        pytest.param("plain s3cret", Webhook(b"plain s3cret"), id="plain-string"),
    ],
)
def test_the_standardwebhooks_library_verifies_what_arrives(sink, build, secret, receiver):
    build(url=sink.url, signing_secret=secret).deliver(payload())
    (request,) = sink.delivered
    assert receiver.verify(request.body, request.headers) == request.json
    assert request.headers["webhook-id"] == "m-signed"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert request.headers["webhook-signature"].startswith("v1,")
    # The older signature is there too, with the same key.
    key = KEY if secret == WHSEC else secret.encode()
    assert request.headers["X-Pixel-Signature"] == "sha256=" + hmac.new(key, request.body, hashlib.sha256).hexdigest()


def test_a_retry_keeps_the_id_and_signs_a_new_timestamp(sink, build):
    """A receiver drops the duplicate by ``webhook-id``; every attempt verifies on its own."""
    destination = build(url=sink.url, signing_secret=WHSEC)
    sink.script(Reply(503))
    with pytest.raises(Exception, match="HTTP 503"):
        destination.deliver(payload("m-retried"))
    destination.deliver(payload("m-retried"))
    first, second = sink.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "m-retried"
    Webhook(WHSEC).verify(second.body, second.headers)


def test_a_stale_replay_is_refused(sink, build):
    """A request captured and replayed later fails verification on its timestamp alone."""
    build(url=sink.url, signing_secret=WHSEC).deliver(payload("m-replayed"))
    (request,) = sink.delivered
    receiver = Webhook(WHSEC)
    receiver.verify(request.body, request.headers)
    # The same request as sent ten minutes ago: signed correctly, but too old.
    stale = int(request.headers["webhook-timestamp"]) - 600
    replayed = {
        **request.headers,
        "webhook-timestamp": str(stale),
        "webhook-signature": standard_signature(KEY, "m-replayed", stale, request.body),
    }
    with pytest.raises(WebhookVerificationError, match="too old"):
        receiver.verify(request.body, replayed)
    # And a changed timestamp without the key to re-sign is refused too.
    with pytest.raises(WebhookVerificationError):
        receiver.verify(request.body, {**request.headers, "webhook-timestamp": str(int(time.time()) + 1)})


def test_a_tampered_body_is_refused(sink, build):
    build(url=sink.url, signing_secret=WHSEC).deliver(payload())
    (request,) = sink.delivered
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC).verify(request.body.replace(b"Opened", b"Clicked"), request.headers)


def test_no_secret_no_signature_headers(sink, build):
    build(url=sink.url).deliver(payload())
    (request,) = sink.delivered
    assert not {"webhook-id", "webhook-timestamp", "webhook-signature"} & {name.lower() for name in request.headers}


@pytest.mark.parametrize("secret", [pytest.param("whsec_not*base64", id="not-base64"), pytest.param("whsec_", id="empty-key")])
def test_a_malformed_whsec_secret_is_a_config_error(secret):
    with pytest.raises(ConfigError, match="destinations.hook.signing_secret"):
        build_destination("hook", {"type": "webhook", "url": "http://127.0.0.1:9", "signing_secret": secret})
