"""The shipped OpenAPI description matches the app: a bounded schemathesis run in-process.

schemathesis generates requests from ``pixel_wsgi/openapi.yaml`` (positive and negative
data), sends them to the WSGI app without a server, and checks every answer: no 5xx, only
documented statuses, content types and headers, bodies that match their schemas.
"""

from __future__ import annotations

from importlib import resources

import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pixel_wsgi import PixelApp

WRITE_KEY = "openapi-write-key"
PIXEL_KEY = "openapi-pixel-key"
DISABLED_KEY = "openapi-disabled-key"
UNKNOWN_KEY = "openapi-unknown-key"
SIGNED_KEY = "openapi-signed-key"

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def load_description() -> dict:
    return yaml.safe_load(resources.files("pixel_wsgi").joinpath("openapi.yaml").read_text("utf-8"))


def build_app() -> PixelApp:
    return PixelApp(
        {
            "sources": [
                {"name": "plain", "write_key": WRITE_KEY, "redirect_hosts": ["example.com"]},
                {"name": "pixel", "write_key": PIXEL_KEY, "errors_as_pixel": True, "infer_types": True},
                {"name": "off", "write_key": DISABLED_KEY, "enabled": False},
                {
                    "name": "signed",
                    "write_key": SIGNED_KEY,
                    "signing_secrets": ["openapi-signing-secret"],
                    "require_signature": True,
                    "redirect_hosts": ["example.com", "*.example.com"],
                },
            ],
            "segment_prefix": "/v1/pixel",
            "destinations": {"memory": {"type": "memory"}},
        }
    )


def narrowed_description() -> dict:
    """The shipped description with ``writeKey`` narrowed to the test app's keys.

    A random write key is a 401 every time; narrowing it lets generation reach the
    parser and the schemas (200/400) as well as 401 and 404.
    """
    description = load_description()
    description["components"]["parameters"]["writeKey"]["schema"] = {
        "type": "string",
        "enum": [WRITE_KEY, WRITE_KEY, PIXEL_KEY, DISABLED_KEY, UNKNOWN_KEY, SIGNED_KEY],
    }
    return description


APP = build_app()
schema = schemathesis.openapi.from_dict(narrowed_description())
schema.app = APP
schema.config.generation.update(max_examples=60)


def test_description_is_shipped_and_names_every_status():
    description = load_description()
    assert description["openapi"].startswith("3.1")
    for path in ("/pixel/v1/page", "/pixel/v1/track"):
        operations = description["paths"][path]
        assert set(operations["get"]["responses"]) == {"200", "400", "401", "403", "404", "414", "503"}
        assert set(operations["head"]["responses"]) == {"200"}
        assert set(operations["post"]["responses"]) == {"405"}


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_app_conforms_to_openapi(case):
    case.call_and_validate(checks=CHECKS)
