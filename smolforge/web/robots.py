"""robots.txt read as search engines read it (RFC 9309), one parse per site.

The rules are parsed by protego, the parser Scrapy uses, which follows RFC 9309 and
Google's reading of it where Python's `urllib.robotparser` does not:

- `*` in a path matches any run of characters and a trailing `$` anchors the end, so
  `Disallow: /*?print=` refuses `/essay.html?print=1` and `Allow: /*.html$` allows
  `/a/b.html` but not `/a/b.html?x=1` (robotparser matches both literally);
- the longest matching rule wins, and Allow wins a tie, whatever their order in the file
  (robotparser takes the first match);
- the group is chosen by the crawler's product token, case-insensitively: the most
  specific `User-agent` line that names it, else `*`.

The product token is the user agent up to its first `/` or space
(`smolforge-scrape/0.1 (+mailto:me@example.com)` -> `smolforge-scrape`), so a contact
address in the user agent never selects some other crawler's group.

What is fetched, and what an unreadable file means, is decided here: robots.txt is
fetched once per site through the crawl's own `Fetcher` (pacing, retries, redirects, the
HTTP cache); a 4xx answer allows everything; a site whose robots.txt cannot be fetched
(5xx, timeout, connection error) disallows everything; `Crawl-delay` raises the site's
delay up to `max_wait_s`.
"""

from __future__ import annotations

import logging
import re

from protego import Protego

from smolforge.web.fetch import Fetcher, FetchError, origin

log = logging.getLogger(__name__)

_ALLOW_ALL = Protego.parse("")
_DISALLOW_ALL = Protego.parse("User-agent: *\nDisallow: /\n")


def product_token(user_agent: str) -> str:
    """The name robots.txt groups are matched against: the user agent up to `/` or space."""
    return re.split(r"[/\s]", user_agent.strip(), maxsplit=1)[0]


class Robots:
    """robots.txt per site, fetched once through the crawl's fetcher."""

    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher
        self.agent = product_token(fetcher.policy.user_agent)
        self.unreachable: dict[str, str] = {}  # site -> why its robots.txt could not be fetched
        self._rules: dict[str, Protego] = {}

    def allowed(self, url: str) -> bool:
        """Whether the policy's user agent may fetch `url`."""
        site = origin(url)
        if site not in self._rules:
            self._rules[site] = self._load(site)
        rules = self._rules[site]
        if rules is _DISALLOW_ALL:  # protego allows /robots.txt itself whatever the rules say
            return False
        return rules.can_fetch(url, self.agent)

    def _load(self, site: str) -> Protego:
        try:
            page = self.fetcher.get(f"{site}/robots.txt", html_only=False)
        except FetchError as e:
            if e.status is not None and 400 <= e.status < 500:
                return _ALLOW_ALL
            log.warning("%s/robots.txt: %s; treating the site as disallowed", site, e)
            self.unreachable[site] = str(e)
            return _DISALLOW_ALL
        # RFC 9309: the file is UTF-8; a byte that is not becomes U+FFFD and matches nothing
        rules = Protego.parse(page.body.decode("utf-8", "replace"))
        delay = rules.crawl_delay(self.agent)
        if delay:
            capped = min(float(delay), self.fetcher.policy.max_wait_s)
            if capped < delay:
                log.warning("%s: Crawl-delay %g s capped at max_wait_s %g s", site, delay, capped)
            self.fetcher.set_delay(site, capped)
        return rules
