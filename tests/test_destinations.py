"""Each destination kind against real parts: an HTTP server on 127.0.0.1, real files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from pixel_wsgi import __version__
from pixel_wsgi.config import build_destination
from pixel_wsgi.destinations import DeliveryError, Destination, Payload
from pixel_wsgi.errors import ConfigError
from pixel_wsgi.options import NonEmptyString, OptionsSchema
from tests.support.sink import Reply, Sink, sink_fixture


@pytest.fixture
def sink():
    yield from sink_fixture()


def build(kind: str, **options: Any) -> Destination:
    return build_destination("dest", {"type": kind, **options})


def payload(message_id: str = "m-1", kind: str = "track") -> Payload:
    return Payload({"type": kind, "messageId": message_id, "event": "Opened", "properties": {"note": "é\n"}}, "web")


@pytest.fixture
def closing():
    built: list[Destination] = []
    yield built
    for destination in built:
        destination.close()


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(
            {"type": "track", "event": "Opened", "properties": {"note": 'é\n\u2028"\\', "revenue": 19.99, "quantity": 2}},
            id="text-and-numbers",
        ),
        pytest.param({"type": "page", "context": {"screen": {"width": 1920}, "list": [1, 2.5, None, True, {"a": []}]}}, id="nested"),
        pytest.param({"type": "track", "properties": {"revenue": 123456789012345678901234567890}}, id="integer-over-64-bits"),
    ],
)
def test_the_body_is_compact_utf8_json_whatever_the_event_holds(event):
    """The same bytes as the standard library's compact, non-ASCII form; an integer too
    large for the fast encoder still comes out whole."""
    body = Payload(event, "web").body
    assert body == json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert json.loads(body) == event
    assert Payload(event, "web").text == body.decode("utf-8")


def test_webhook_posts_json_with_user_agent_and_headers(sink, closing):
    destination = build("webhook", url=sink.url + "/hook", headers={"X-Team": "growth"})
    closing.append(destination)
    destination.deliver(payload())
    (request,) = sink.delivered
    assert request.method == "POST"
    assert request.path == "/hook"
    assert request.json["messageId"] == "m-1"
    assert request.json["properties"]["note"] == "é\n"
    assert request.headers["User-Agent"] == f"pixel-wsgi/{__version__}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Team"] == "growth"
    assert "X-Pixel-Signature" not in request.headers


def test_webhook_signature_verifies_at_the_receiver(sink, closing):
    destination = build("webhook", url=sink.url, signing_secret="s3cret")
    closing.append(destination)
    destination.deliver(payload())
    (request,) = sink.delivered
    expected = "sha256=" + hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Pixel-Signature"], expected)


def test_webhook_keeps_one_connection_alive(sink, closing):
    destination = build("webhook", url=sink.url)
    closing.append(destination)
    for number in range(5):
        destination.deliver(payload(f"m-{number}"))
    assert len(sink.delivered) == 5
    # One open connection served all five: the sink saw a single client port.
    assert len(sink._connections) == 1


@pytest.mark.parametrize(
    ("kind", "url_option", "kind_of_event", "path"),
    [
        pytest.param("rudderstack", "data_plane_url", "track", "/v1/track", id="rudderstack-track"),
        pytest.param("rudderstack", "data_plane_url", "page", "/v1/page", id="rudderstack-page"),
        pytest.param("segment", "api_url", "track", "/v1/track", id="segment-track"),
        pytest.param("segment", "api_url", "page", "/v1/page", id="segment-page"),
    ],
)
def test_rudderstack_and_segment_paths_and_basic_auth(sink, closing, kind, url_option, kind_of_event, path):
    destination = build(kind, **{url_option: sink.url + "/", "write_key": "wk-123456"})
    closing.append(destination)
    destination.deliver(payload(kind=kind_of_event))
    (request,) = sink.delivered
    assert request.path == path
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"wk-123456:").decode()
    assert "wk-123456" not in repr(destination)


def test_segment_defaults_to_segments_api():
    destination = build("segment", write_key="wk")
    assert destination.url_for(payload()) == "https://api.segment.io/v1/track"


@pytest.mark.parametrize(
    ("reply", "retryable", "status"),
    [
        pytest.param(Reply(500), True, 500, id="500"),
        pytest.param(Reply(503, headers={"Retry-After": "7"}), True, 503, id="503-retry-after"),
        pytest.param(Reply(408), True, 408, id="408"),
        pytest.param(Reply(429), True, 429, id="429"),
        pytest.param(Reply(400, body=b"bad event"), False, 400, id="400"),
        pytest.param(Reply(404), False, 404, id="404"),
        pytest.param(Reply(301, headers={"Location": "/elsewhere"}), False, 301, id="redirect-not-followed"),
    ],
)
def test_http_status_becomes_delivery_error(sink, closing, reply, retryable, status):
    destination = build("webhook", url=sink.url)
    closing.append(destination)
    sink.script(reply)
    with pytest.raises(DeliveryError) as caught:
        destination.deliver(payload())
    assert caught.value.retryable is retryable
    assert caught.value.status == status
    if "Retry-After" in reply.headers:
        assert caught.value.retry_after == 7.0
    if reply.body:
        assert caught.value.response == "bad event"


def test_connection_refused_is_retryable(closing):
    with Sink() as gone:
        url = gone.url
    destination = build("webhook", url=url, timeout=0.5)
    closing.append(destination)
    with pytest.raises(DeliveryError, match="Connection refused") as caught:
        destination.deliver(payload())
    assert caught.value.retryable


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"type": "webhook"}, "destinations.dest.url: required", id="webhook-url-required"),
        pytest.param({"type": "webhook", "url": "ftp://x"}, "destinations.dest.url: must be an http", id="webhook-url-scheme"),
        pytest.param(
            {"type": "webhook", "url": "http://x", "timeout": "5"}, "destinations.dest.timeout: must be a number", id="timeout-type"
        ),
        pytest.param(
            {"type": "webhook", "url": "http://x", "retries": -1}, "destinations.dest.retries: must be at least 0", id="retries-negative"
        ),
        pytest.param(
            {"type": "webhook", "url": "http://x", "headers": {"X": 1}}, "destinations.dest.headers: values must be strings", id="headers"
        ),
        pytest.param(
            {"type": "webhook", "url": "http://x", "secret": "s"}, "destinations.dest.secret: unknown option", id="unknown-option"
        ),
        pytest.param({"type": "rudderstack", "write_key": "k"}, "destinations.dest.data_plane_url: required", id="rudderstack-url"),
        pytest.param({"type": "rudderstack", "data_plane_url": "http://x"}, "destinations.dest.write_key: required", id="rudderstack-key"),
        pytest.param({"type": "segment"}, "destinations.dest.write_key: required", id="segment-key"),
        pytest.param({"type": "jsonl"}, "destinations.dest.path: required", id="jsonl-path"),
        pytest.param({"type": "kafka"}, "destinations.dest.type: unknown type 'kafka'", id="unknown-type"),
        pytest.param(
            {"type": "tests.test_destinations:NotADestination"}, "is not a pixel_wsgi.destinations.Destination", id="not-a-destination"
        ),
        pytest.param({"type": "tests.test_destinations:ListDestination"}, "destinations.dest.label: required", id="user-class-option"),
    ],
)
def test_config_errors_name_the_key_path(tmp_path, options, message):
    from pixel_wsgi import PixelApp

    config = {
        "sources": [{"name": "web", "write_key": "k"}],
        "destinations": {"dest": options},
        "spool": {"path": str(tmp_path / "spool.sqlite3")},
    }
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        PixelApp(config)


class NotADestination:
    pass


class ListDestination(Destination):
    """A user's own destination, as the README shows it."""

    class Options(OptionsSchema):
        label = NonEmptyString(required=True)

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        super().__init__(name, options)
        self.label = options["label"]
        self.received: list[tuple[str, dict[str, Any]]] = []

    def deliver(self, payload: Payload) -> None:
        self.received.append((self.label, json.loads(payload.body)))


def test_user_class_destination_receives_events(tmp_path):
    from webtest import TestApp

    from pixel_wsgi import PixelApp
    from tests.support.delivery import delivery_config, track_url

    app = PixelApp(delivery_config(tmp_path, {"mine": {"type": "tests.test_destinations:ListDestination", "label": "L"}}))
    try:
        TestApp(app).get(track_url("m-user"))
        destination = app.destination("mine")
        assert isinstance(destination, ListDestination)
        assert [(label, event["messageId"]) for label, event in destination.received] == [("L", "m-user")]
    finally:
        app.close()


def test_jsonl_appends_one_line_per_event(tmp_path, closing):
    path = tmp_path / "events.jsonl"
    destination = build("jsonl", path=str(path))
    closing.append(destination)
    for number in range(3):
        destination.deliver(payload(f"m-{number}"))
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line)["messageId"] for line in lines[:-1]] == ["m-0", "m-1", "m-2"]


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_a_path_in_a_missing_folder_is_a_config_error(tmp_path, kind):
    with pytest.raises(ConfigError, match=f"destinations.dest.path: the folder {tmp_path}/missing does not exist"):
        build(kind, path=str(tmp_path / "missing" / "events"))


def test_jsonl_folder_gone_after_start_is_a_delivery_error(tmp_path, closing):
    folder = tmp_path / "logs"
    folder.mkdir()
    destination = build("jsonl", path=str(folder / "events.jsonl"))
    closing.append(destination)
    folder.rmdir()
    with pytest.raises(DeliveryError, match="jsonl"):
        destination.deliver(payload())


def test_constructors_open_nothing(tmp_path):
    """Pins the gunicorn --preload rule: building destinations creates no file or socket."""
    build("jsonl", path=str(tmp_path / "e.jsonl"))
    build("sqlite", path=str(tmp_path / "e.sqlite3"))
    destination = build("webhook", url="http://127.0.0.1:9")
    assert list(tmp_path.iterdir()) == []
    assert len(destination._sessions) == 0


def test_a_forked_worker_opens_its_own_connections(sink, closing, monkeypatch):
    """Pins gunicorn fork safety: a new pid gets a new session; the parent's is left alone."""
    import os

    destination = build("webhook", url=sink.url)
    closing.append(destination)
    destination.deliver(payload("m-parent"))
    parent_session = destination._sessions.get()
    [(parent_connection, _)] = parent_session.connections.values()
    parent_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent_pid + 1)
    destination.deliver(payload("m-child"))
    assert destination._sessions.get() is not parent_session
    destination.close()  # the "child" closes only what it opened
    monkeypatch.undo()
    assert parent_connection.sock is not None  # the parent's connection was not closed by the child
    parent_session.close()
    assert sink.delivered_message_ids() == ["m-parent", "m-child"]


def test_https_destinations_verify_the_certificate(tmp_path, closing):
    """A destination behind a certificate no CA signed is refused, never posted to: the
    connection is TLS with the certificate checked against certifi's bundle."""
    import http.server
    import ssl
    import subprocess
    import threading

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        destination = build("webhook", url=f"https://127.0.0.1:{server.server_address[1]}/hook", timeout=5)
        closing.append(destination)
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            destination.deliver(payload())
        assert received == []
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
