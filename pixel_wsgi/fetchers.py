"""Who fetched the pixel: a person's mail client, a mail proxy, a prefetcher or a bot.

An email open is a request for an image, and many of those requests are not a person
reading: Apple Mail Privacy Protection fetches every image of every message when it
arrives, mail security scanners and link checkers fetch every URL, crawlers follow
pixels they find on the web. Gmail and Yahoo fetch through their own proxies, but only
when a person opens the message, so those are real opens from a machine's address.

``FetcherClassifier.classify(user_agent, address)`` answers with the matching
``Fetcher`` (its ``name`` and whether the open is a ``machine``'s) or ``None`` for an
ordinary browser or mail client. The order of the checks is the rule:

1. the configured ``[[fetchers]]``, in file order (so an operator can override
   anything below);
2. the built-in fetchers (``BUILT_IN_FETCHERS``);
3. the ``crawlerdetect`` user-agent database, minus the mail clients it lists
   (``MAIL_CLIENT_PATTERNS``): crawlerdetect is written for web sites, where Outlook
   fetching a page is not a visitor; for an email pixel, Outlook is the reader.

Why ``crawlerdetect`` and not Matomo's ``device-detector`` port: crawlerdetect is
~1,400 maintained patterns (a 116 KB package, no dependencies), and it knows curl,
python-requests, link checkers and headless browsers. device-detector is 20 MB of YAML,
takes 10-2,000 ms to parse one uncached user agent, and calls curl a client, not a bot.
Both call ``GoogleImageProxy`` a bot, which is why the built-in fetchers are checked
first.

Cheap per request: the patterns are compiled once (see ``_bot_user_agent`` for how and
why not as crawlerdetect compiles them), user-agent matching is cached per user-agent
string (bounded LRU), and only fetchers with ``networks`` look at the address.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable, Tuple, Union

from crawlerdetect.providers.crawlers import data as CRAWLER_PATTERNS
from crawlerdetect.providers.exclusions import data as EXCLUSION_PATTERNS

from .config import FetcherConfig

__all__ = ["BOT", "BUILT_IN_FETCHERS", "Fetcher", "FetcherClassifier", "MAIL_CLIENT_PATTERNS"]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# Distinct user agents remembered per process; a mail campaign sees a few hundred.
USER_AGENT_CACHE_SIZE = 4096
# Only this much of a user agent is classified: real ones are shorter, and the
# database's scan costs time in proportion to the length.
MAX_USER_AGENT_LENGTH = 512

# crawlerdetect's patterns for programs that a person reads mail with (or that
# fetch on a person's behalf and are handled by the built-in fetchers): for an
# email pixel these are real opens, not bots.
MAIL_CLIENT_PATTERNS = frozenset(
    {
        r"Microsoft Outlook",
        # Outlook for Windows renders images as "Microsoft Office/16.0 (...; Microsoft
        # Outlook 16.0...)"; Office's own link probes are caught by OFFICE_LINK_PROBE.
        r"Microsoft Office",
        r"MacOutlook\/",
        r"Outlook-Express",
        r"Outlook-iOS",
        r"Canary%20Mail",
        r"^Mail\/",
        r"YahooMailProxy",
        r"via ggpht\.com GoogleImageProxy",
    }
)


# What crawlerdetect's "Microsoft Office" pattern was right about: Word and Excel
# checking a link before opening it. Kept as a bot pattern of our own.
OFFICE_LINK_PROBE = r"Microsoft Office (?:Existence|Protocol) Discovery"


@dataclass(frozen=True)
class Fetcher:
    """A kind of program that fetches pixels.

    ``machine`` is true when the fetch says nothing about a person (a prefetch, a
    scan): senders leave such opens out of open rates.
    """

    name: str
    machine: bool
    user_agent: re.Pattern[str] | None = None
    networks: Tuple[Network, ...] = ()

    def matches_user_agent(self, user_agent: str) -> bool:
        return self.user_agent is None or self.user_agent.search(user_agent) is not None

    def matches_address(self, address: str | None) -> bool:
        if not self.networks:
            return True
        ip = _parse_address(address)
        return ip is not None and any(ip.version == network.version and ip in network for network in self.networks)

    @property
    def context(self) -> dict[str, object]:
        """What an event's ``context.pixel`` says about this fetcher."""
        return {"fetcher": self.name, "machine": self.machine}

    @classmethod
    def from_config(cls, config: FetcherConfig) -> Fetcher:
        return cls(
            name=config.name,
            machine=config.machine,
            user_agent=re.compile(config.user_agent) if config.user_agent is not None else None,
            networks=tuple(ipaddress.ip_network(network, strict=False) for network in config.networks),
        )


BUILT_IN_FETCHERS: Tuple[Fetcher, ...] = (
    # Gmail fetches images through its proxy when the person opens the message.
    Fetcher("gmail-image-proxy", machine=False, user_agent=re.compile(r"GoogleImageProxy")),
    Fetcher("yahoo-mail-proxy", machine=False, user_agent=re.compile(r"YahooMailProxy")),
    # Mail Privacy Protection prefetches every image from Apple's 17.0.0.0/8 with the
    # bare user agent, whether or not anyone reads the message.
    Fetcher(
        "apple-mail-privacy-protection",
        machine=True,
        user_agent=re.compile(r"\AMozilla/5\.0\Z"),
        networks=(ipaddress.ip_network("17.0.0.0/8"),),
    ),
)
# Whatever the user-agent database recognises: crawlers, link checkers, scanners.
BOT = Fetcher("bot", machine=True)


# A leading ``[...]*`` may match nothing, so it never changes *whether* a search
# finds a pattern; but on a long run of those characters it makes the search
# quadratic (crawlerdetect's ``[a-z0-9\-_]*(bot|crawl|...)`` took half a second on a
# user agent of 1,000 letters). Only a yes/no answer is needed: drop the prefix.
_OPTIONAL_PREFIX = re.compile(r"\A\[[^\]]*\]\*")
# Upper-case letters outside escapes (``\S`` must stay ``\S``).
_UPPER_OUTSIDE_ESCAPES = re.compile(r"\\.|[A-Z]")


def _lower_pattern(pattern: str) -> str:
    """The pattern for lower-cased text: IGNORECASE would make the scan 4-10x slower."""
    return _UPPER_OUTSIDE_ESCAPES.sub(lambda match: match.group(0) if match.group(0)[0] == "\\" else match.group(0).lower(), pattern)


@lru_cache(maxsize=1)
def _bot_user_agent() -> Tuple[re.Pattern[str], re.Pattern[str]]:
    """crawlerdetect's database as two compiled expressions for lower-cased user agents."""
    crawlers = [_OPTIONAL_PREFIX.sub("", pattern) for pattern in CRAWLER_PATTERNS if pattern not in MAIL_CLIENT_PATTERNS]
    crawlers.append(OFFICE_LINK_PROBE)
    return (
        re.compile("|".join(_lower_pattern(pattern) for pattern in EXCLUSION_PATTERNS)),
        re.compile("|".join(_lower_pattern(pattern) for pattern in crawlers)),
    )


def is_bot_user_agent(user_agent: str) -> bool:
    """crawlerdetect's rule: remove the harmless tokens it lists, then look for a crawler."""
    exclusions, crawlers = _bot_user_agent()
    remaining = exclusions.sub("", user_agent.lower()).strip()
    return bool(remaining) and crawlers.search(remaining) is not None


def _parse_address(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket (::ffff:17.58.0.1) is still that client.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class FetcherClassifier:
    """Built once per app; ``classify`` is safe to call from any thread."""

    def __init__(self, configured: Iterable[FetcherConfig] = (), *, use_database: bool = True) -> None:
        self.fetchers: Tuple[Fetcher, ...] = tuple(Fetcher.from_config(item) for item in configured) + BUILT_IN_FETCHERS
        self.use_database = use_database
        if use_database:
            # Compiled here, not on the first request: ~1,400 alternatives take tens of
            # milliseconds, and a --preload fork then shares the compiled expression.
            _bot_user_agent()
        # Per user agent: the fetchers whose user_agent matches, in order, and whether
        # the database calls it a bot. The address is checked per request (it varies).
        self._by_user_agent: Callable[[str], Tuple[Tuple[Fetcher, ...], bool]] = lru_cache(maxsize=USER_AGENT_CACHE_SIZE)(
            self._match_user_agent
        )

    def _match_user_agent(self, user_agent: str) -> Tuple[Tuple[Fetcher, ...], bool]:
        candidates = tuple(fetcher for fetcher in self.fetchers if fetcher.matches_user_agent(user_agent))
        return candidates, self.use_database and is_bot_user_agent(user_agent)

    def classify(self, user_agent: str | None, address: str | None) -> Fetcher | None:
        """The fetcher behind one request, or ``None`` for a person's browser or mail client."""
        user_agent = (user_agent or "")[:MAX_USER_AGENT_LENGTH]
        candidates, bot = self._by_user_agent(user_agent)
        for fetcher in candidates:
            if fetcher.matches_address(address):
                return fetcher
        return BOT if bot else None
