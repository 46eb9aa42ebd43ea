"""The configuration: TOML or dict, ${NAME} from the environment, every mistake with its key path."""

from __future__ import annotations

import textwrap

import pytest
from webtest import TestApp

from pixel_wsgi import ConfigError, PixelApp, create_app, load_config

GOOD = {
    "sources": [{"name": "web", "write_key": "k1"}],
    "destinations": {"mem": {"type": "memory"}},
}


def write(tmp_path, text: str):
    path = tmp_path / "pixel.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_toml_file_with_environment_references(tmp_path):
    path = write(
        tmp_path,
        """
        prefix = "/t"
        trusted_proxies = 1
        response_body = "ok"

        [[sources]]
        name = "newsletter"
        write_key = "${NEWSLETTER_KEY}"
        destinations = ["mem"]
        ip = "anonymize"
        errors_as_pixel = true
        unknown_params = "keep"
        infer_types = true

        [destinations.mem]
        type = "memory"

        [limits]
        max_params = 50
        """,
    )
    config = load_config(path, environ={"NEWSLETTER_KEY": "secret-1"})
    [source] = config.sources
    assert (source.write_key, source.ip, source.errors_as_pixel, source.unknown_params, source.infer_types) == (
        "secret-1",
        "anonymize",
        True,
        "keep",
        True,
    )
    assert (config.prefix, config.trusted_proxies, config.response_body, config.limits.max_params) == ("/t", 1, "ok", 50)


def test_dollar_dollar_is_a_literal_dollar():
    config = load_config({**GOOD, "sources": [{"name": "web", "write_key": "a$${B}c"}]}, environ={})
    assert config.sources[0].write_key == "a${B}c"


@pytest.mark.parametrize(
    ("change", "errors"),
    [
        pytest.param({"sources": []}, ["sources: at least one [[sources]] table is required"], id="no-sources"),
        pytest.param(
            {"destinations": {}}, ["destinations: at least one destination is required (events must go somewhere)"], id="no-destinations"
        ),
        pytest.param({"sources": [{"name": "web"}]}, ["sources[0].write_key: required"], id="missing-write-key"),
        pytest.param(
            {"sources": [{"name": "web", "write_key": "${MISSING_KEY}"}]},
            ["sources[0].write_key: environment variable MISSING_KEY is not set"],
            id="missing-env",
        ),
        pytest.param(
            {"sources": [{"name": "web", "write_key": "k", "ip": "hash"}]},
            ["sources[0].ip: must be one of full, anonymize, drop, not 'hash'"],
            id="bad-ip-mode",
        ),
        pytest.param(
            {"sources": [{"name": "web", "write_key": "k", "unknown_params": "drop"}]},
            ["sources[0].unknown_params: must be one of ignore, reject, keep, not 'drop'"],
            id="bad-unknown-params",
        ),
        pytest.param(
            {"sources": [{"name": "web", "write_key": "k", "errors_as_pixel": "yes"}]},
            ["sources[0].errors_as_pixel: must be true or false, not str"],
            id="bad-bool",
        ),
        pytest.param(
            {"sources": [{"name": "web", "write_key": "k", "destinations": ["nope"]}]},
            ["sources[0].destinations[0]: no destination named 'nope'"],
            id="unknown-destination",
        ),
        pytest.param(
            {"sources": [{"name": "web", "write_key": "k", "color": "red"}]},
            ["sources[0].color: unknown option"],
            id="unknown-source-option",
        ),
        pytest.param(
            {"sources": [{"name": "a", "write_key": "k"}, {"name": "a", "write_key": "k"}]},
            ["sources[1].name: 'a' is also the name of sources[0]", "sources[1].write_key: same write key as sources[0]"],
            id="duplicates",
        ),
        pytest.param({"prefix": "pixel"}, ["prefix: must start with '/' and not end with '/' (or be empty)"], id="bad-prefix"),
        pytest.param({"trusted_proxies": -1}, ["trusted_proxies: must be at least 0"], id="negative-proxies"),
        pytest.param({"trusted_proxies": True}, ["trusted_proxies: must be an integer, not True"], id="bool-as-int"),
        pytest.param({"response_body": "png"}, ["response_body: must be one of gif, ok, not 'png'"], id="bad-response-body"),
        pytest.param({"limits": {"max_params": "many"}}, ["limits.max_params: must be an integer, not str"], id="bad-limit"),
        pytest.param({"limits": {"max_widgets": 1}}, ["limits.max_widgets: unknown option"], id="unknown-limit"),
        pytest.param({"dispatch": {"budget": -1}}, ["dispatch.budget: must be at least 0"], id="negative-budget"),
        pytest.param({"colour": "blue"}, ["colour: unknown option"], id="unknown-top-level"),
        pytest.param(
            {"destinations": {"hook": {"url": "x"}}},
            ["destinations.hook.type: required (webhook, rudderstack, segment, jsonl, sqlite, memory or package.module:Class)"],
            id="missing-type",
        ),
        pytest.param(
            {"destinations": {"hook": {"type": "carrier-pigeon"}}},
            ["destinations.hook.type: unknown type 'carrier-pigeon': use one of "],
            id="unknown-type",
        ),
        pytest.param(
            {"destinations": {"hook": {"type": "no.such.module:Thing"}}},
            ["destinations.hook.type: cannot import 'no.such.module'"],
            id="bad-import",
        ),
        pytest.param(
            {"destinations": {"hook": {"type": "json:JSONDecoder"}}},
            ["destinations.hook.type: 'json:JSONDecoder' is not a pixel_wsgi.destinations.Destination subclass"],
            id="not-a-destination",
        ),
        pytest.param(
            {"destinations": {"mem": {"type": "memory", "size": 3}}},
            ["destinations.mem.size: unknown option"],
            id="unknown-destination-option",
        ),
        pytest.param(
            {"destinations": {"db": {"type": "sqlite", "path": ""}}}, ["destinations.db.path: must not be empty"], id="empty-sqlite-path"
        ),
    ],
)
def test_config_errors_name_their_key_path(change, errors):
    with pytest.raises(ConfigError) as raised:
        load_config({**GOOD, **change}, environ={}) if "destinations" not in change else PixelApp({**GOOD, **change})
    for expected, actual in zip(errors, raised.value.errors):
        assert actual.startswith(expected)
    assert len(raised.value.errors) == len(errors)


def test_every_mistake_is_reported_at_once():
    with pytest.raises(ConfigError) as raised:
        load_config({"prefix": 3, "sources": [{"write_key": "", "ip": "x"}], "destinations": {"m": {"type": "memory"}}}, environ={})
    assert raised.value.errors == [
        "prefix: must be a string, not int",
        "sources[0].name: required",
        "sources[0].write_key: must not be empty",
        "sources[0].ip: must be one of full, anonymize, drop, not 'x'",
    ]


def test_bad_toml_is_reported_with_the_file(tmp_path):
    path = write(tmp_path, "prefix = \n")
    with pytest.raises(ConfigError, match=r"pixel\.toml: not valid TOML"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_create_app_reads_pixel_wsgi_config(tmp_path, monkeypatch):
    path = write(
        tmp_path,
        """
        [[sources]]
        name = "web"
        write_key = "file-key"
        [destinations.mem]
        type = "memory"
        """,
    )
    monkeypatch.setenv("PIXEL_WSGI_CONFIG", str(path))
    app = create_app()
    TestApp(app).get("/pixel/v1/page?writeKey=file-key&anonymousId=a", status=200)
    assert len(app.destination("mem").events) == 1


def test_create_app_without_any_config(monkeypatch):
    monkeypatch.delenv("PIXEL_WSGI_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="PIXEL_WSGI_CONFIG"):
        create_app()


def test_source_destinations_default_to_all():
    config = {
        "sources": [{"name": "a", "write_key": "ka"}, {"name": "b", "write_key": "kb", "destinations": ["one"]}],
        "destinations": {"one": {"type": "memory"}, "two": {"type": "memory"}},
    }
    app = PixelApp(config)
    client = TestApp(app)
    client.get("/pixel/v1/page?writeKey=ka&anonymousId=x")
    client.get("/pixel/v1/page?writeKey=kb&anonymousId=y")
    assert [e["anonymousId"] for e in app.destination("one").events] == ["x", "y"]
    assert [e["anonymousId"] for e in app.destination("two").events] == ["x"]


@pytest.mark.parametrize("prefix", ["", "/collect/px"])
def test_prefix(prefix):
    app = PixelApp({**GOOD, "prefix": prefix})
    TestApp(app).get(f"{prefix}/track?writeKey=k1&anonymousId=a&event=E", status=200)
    TestApp(app).get("/pixel/v1/track?writeKey=k1&anonymousId=a&event=E", status=404)
