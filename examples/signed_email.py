"""An HTML email with a signed open pixel and signed, tracked links.

Each recipient's email gets its own URLs, built at send time by ``pixel_url()``:

- the open pixel is a ``track`` event ``Email Opened`` whose ``messageId`` is one per
  recipient and campaign, so that with ``dedupe_window`` a second open from the same
  mailbox (or Apple's prefetch followed by the real open) is counted once;
- every link goes through ``{prefix}/click``, which records ``Link Clicked`` and
  redirects to the link's target;
- all of them are signed with the source's secret and expire after 90 days, so that
  nobody can forge events with the write key they find in the HTML, nor use the click
  endpoint to redirect anywhere else.

Run a server with examples/email.toml, print one email, and open its URLs::

    EMAIL_WRITE_KEY=email-key EMAIL_SIGNING_SECRET=change-me-to-32-random-bytes \\
        pixel-wsgi serve --config examples/email.toml --port 8080
    EMAIL_SIGNING_SECRET=change-me-to-32-random-bytes \\
        python examples/signed_email.py http://127.0.0.1:8080/pixel/v1 email-key
    curl -s -o /dev/null -w '%{http_code}\\n' "$(EMAIL_SIGNING_SECRET=change-me-to-32-random-bytes \\
        python examples/signed_email.py http://127.0.0.1:8080/pixel/v1 email-key --open-url)"
    curl -s -o /dev/null -w '%{http_code} %{redirect_url}\\n' "$(EMAIL_SIGNING_SECRET=change-me-to-32-random-bytes \\
        python examples/signed_email.py http://127.0.0.1:8080/pixel/v1 email-key --click-url)"
    pixel-wsgi events --db email-events.sqlite3
"""

from __future__ import annotations

import html
import os
import sys
from string import Template
from typing import Any, Mapping

from pixel_wsgi import pixel_url

# Long enough for a campaign's mail to be read; short enough that a leaked URL dies.
URL_LIFETIME = 90 * 24 * 3600

EMAIL = Template(
    """\
<!doctype html>
<html>
  <body>
    <p>Hello $first_name,</p>
    <p>Our spring collection is here.</p>
    <p><a id="cta" href="$shop_link">See what is new</a></p>
    <p><a id="unsubscribe" href="$unsubscribe_link">Unsubscribe</a></p>
    <img id="open" src="$pixel" width="1" height="1" alt="" style="display:block;border:0">
  </body>
</html>
"""
)


def open_url(base_url: str, write_key: str, secret: str, recipient: Mapping[str, Any], campaign: str) -> str:
    return pixel_url(
        base_url,
        write_key,
        "track",
        event="Email Opened",
        user_id=recipient["id"],
        # One id per recipient and campaign: repeated opens are one event within the window.
        messageId=f"open-{campaign}-{recipient['id']}",
        properties={"campaign": campaign},
        context={"campaign": {"name": campaign, "medium": "email"}},
        signing_secret=secret,
        expires_in=URL_LIFETIME,
    )


def click_url(base_url: str, write_key: str, secret: str, recipient: Mapping[str, Any], campaign: str, target: str, link: str) -> str:
    return pixel_url(
        base_url,
        write_key,
        "click",
        url=target,
        user_id=recipient["id"],
        properties={"campaign": campaign, "link": link},
        signing_secret=secret,
        expires_in=URL_LIFETIME,
    )


def render_email(
    base_url: str,
    write_key: str,
    secret: str,
    recipient: Mapping[str, Any],
    *,
    campaign: str = "spring-2024",
    shop: str = "https://shop.example.com/spring",
    unsubscribe: str = "https://shop.example.com/unsubscribe",
) -> str:
    # URLs go into HTML attributes: escape them, or their '&' would start entities.
    def attribute(url: str) -> str:
        return html.escape(url, quote=True)

    return EMAIL.substitute(
        first_name=html.escape(recipient["first_name"]),
        pixel=attribute(open_url(base_url, write_key, secret, recipient, campaign)),
        shop_link=attribute(click_url(base_url, write_key, secret, recipient, campaign, shop, "cta")),
        unsubscribe_link=attribute(click_url(base_url, write_key, secret, recipient, campaign, unsubscribe, "unsubscribe")),
    )


SAMPLE_RECIPIENT = {"id": "user-42", "first_name": "Ada"}

if __name__ == "__main__":
    arguments = [argument for argument in sys.argv[1:] if not argument.startswith("--")]
    base = arguments[0] if arguments else "http://127.0.0.1:8080/pixel/v1"
    key = arguments[1] if len(arguments) > 1 else "email-key"
    signing_secret = os.environ.get("EMAIL_SIGNING_SECRET")
    if not signing_secret:
        sys.exit("set EMAIL_SIGNING_SECRET to the source's signing secret")
    if "--open-url" in sys.argv:
        print(open_url(base, key, signing_secret, SAMPLE_RECIPIENT, "spring-2024"))
    elif "--click-url" in sys.argv:
        print(click_url(base, key, signing_secret, SAMPLE_RECIPIENT, "spring-2024", "https://shop.example.com/spring", "cta"))
    else:
        print(render_email(base, key, signing_secret, SAMPLE_RECIPIENT))
