"""An HTML email with an open-tracking pixel, rendered with ``string.Template``.

``pixel_url()`` builds the pixel's URL for each recipient at send time; the template
only places it. Run it from the repository root to print one rendered email::

    python examples/email_template.py https://px.example.com/pixel/v1 dev-write-key

Against a local server (``pixel-wsgi serve --write-key dev-write-key``), open the
printed pixel URL and see the event::

    curl -s -o /dev/null -w '%{http_code}\\n' "$(python examples/email_template.py --url-only)"
    pixel-wsgi events
"""

from __future__ import annotations

import html
import sys
from string import Template
from typing import Any, Mapping

from pixel_wsgi import pixel_url

EMAIL = Template(
    """\
<!doctype html>
<html>
  <body>
    <p>Hello $first_name,</p>
    <p>Our spring issue is out.</p>
    <!-- width/height and an empty alt: clients that block images show nothing. -->
    <img src="$pixel" width="1" height="1" alt="" style="display:block;border:0">
  </body>
</html>
"""
)


def open_pixel(base_url: str, write_key: str, recipient: Mapping[str, Any], campaign: str) -> str:
    """A ``track`` pixel for one recipient's open of one campaign."""
    return pixel_url(
        base_url,
        write_key,
        "track",
        event="Email Opened",
        user_id=recipient["id"],
        properties={"campaign": campaign, "list": recipient.get("list", "newsletter")},
        context={"campaign": {"name": campaign, "medium": "email", "source": "newsletter"}},
    )


def render_email(base_url: str, write_key: str, recipient: Mapping[str, Any], campaign: str = "spring-2024") -> str:
    # The URL goes into an HTML attribute: escape it, or its '&' would start entities.
    pixel = html.escape(open_pixel(base_url, write_key, recipient, campaign), quote=True)
    return EMAIL.substitute(first_name=html.escape(recipient["first_name"]), pixel=pixel)


SAMPLE_RECIPIENT = {"id": "user-42", "first_name": "Ada", "list": "newsletter"}

if __name__ == "__main__":
    arguments = [argument for argument in sys.argv[1:] if argument != "--url-only"]
    base = arguments[0] if arguments else "http://127.0.0.1:8080/pixel/v1"
    key = arguments[1] if len(arguments) > 1 else "dev-write-key"
    if "--url-only" in sys.argv:
        print(open_pixel(base, key, SAMPLE_RECIPIENT, "spring-2024"))
    else:
        print(render_email(base, key, SAMPLE_RECIPIENT))
