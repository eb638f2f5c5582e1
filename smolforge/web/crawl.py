"""Breadth-first crawl from a start page, and serving a local folder as a site.

Which links are followed: http(s) links of the start page's site (scheme + host + port)
or of `allowed_sites`, whose path and query match an `include` pattern (if any) and no
`exclude` pattern, within `max_depth` hops, allowed by robots.txt, up to `max_pages`
requests. robots.txt is read once per site through the same fetcher
(`smolforge.web.robots.Robots`, wildcard rules included). Every link not followed and
every page not fetched is counted once, under the first reason that applies, in a
`CrawlReport`. Links are visited in document order, so a site that does not change is
crawled in the same order every time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from smolforge.web.extract import decode_html, find_links
from smolforge.web.fetch import Fetcher, FetchError, origin
from smolforge.web.robots import Robots

log = logging.getLogger(__name__)

# Metrics keys for links and pages not crawled (FetchError reasons marked skipped included).
SKIP_REASONS = ("robots", "offsite", "pattern", "depth", "limit", "duplicate", "not_html", "too_large")


@dataclass(frozen=True)
class LinkRules:
    """Which links to follow (values come from params.yaml, section scrape)."""

    allowed_sites: list[str]  # origins followed besides the start page's, e.g. https://blog.example.com
    include: list[str]  # regexes searched in a link's path?query; if any, one must match
    exclude: list[str]  # regexes searched in a link's path?query; none may match
    max_pages: int  # requests for pages (robots.txt not counted)
    max_depth: int  # link hops from the start page


@dataclass
class Page:
    """One HTML page received: its final URL (after redirects), depth and decoded text."""

    url: str
    depth: int
    html: str
    encoding: str
    from_cache: bool


@dataclass
class CrawlReport:
    """Counts by reason, and which URL was skipped or failed and why."""

    pages: int = 0  # HTML pages received, from the network or the cache
    skipped: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (url, reason, detail)

    def skip(self, url: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        self.problems.append((url, reason, detail))

    def fail(self, url: str, reason: str, detail: str) -> None:
        log.warning("failed %s: %s", url, detail)
        self.failed[reason] += 1
        self.problems.append((url, reason, detail))


class StartPageError(Exception):
    """The start page could not be fetched: there is nothing to crawl."""


def normalize_url(url: str) -> str:
    """Lower-case scheme and host, no default port, no user info or fragment, path at least "/"."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _target(url: str) -> str:
    """The part of a URL that include / exclude patterns are searched in: path?query."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def crawl(start_url: str, fetcher: Fetcher, rules: LinkRules, report: CrawlReport) -> Iterator[Page]:
    """Yield the HTML pages reachable from `start_url` under `rules`, breadth first.

    Raises StartPageError if robots.txt forbids the start page or it cannot be fetched.
    """
    return _Crawl(start_url, fetcher, rules, report).pages()


class _Crawl:
    """One crawl's state: the sites and patterns it follows, what it has seen and received."""

    def __init__(self, start_url: str, fetcher: Fetcher, rules: LinkRules, report: CrawlReport) -> None:
        self.fetcher, self.rules, self.report = fetcher, rules, report
        self.robots = Robots(fetcher)
        self.start = normalize_url(start_url)
        self.sites = {origin(self.start), *(origin(s) for s in rules.allowed_sites)}
        self.include = [re.compile(p) for p in rules.include]
        self.exclude = [re.compile(p) for p in rules.exclude]
        self.seen = {self.start}  # every URL met, so each is counted once
        self.received: set[str] = set()  # final URLs of pages received

    def pages(self) -> Iterator[Page]:
        self._check_start()
        queue, n_requests = deque([(self.start, 0)]), 0
        while queue:
            url, depth = queue.popleft()
            if n_requests >= self.rules.max_pages:
                self.report.skip(url, "limit", f"max_pages {self.rules.max_pages} reached")
                continue
            n_requests += 1
            page = self._fetch(url, depth)
            if page is None:
                continue
            yield page
            queue.extend(self._follow(page))

    def _check_start(self) -> None:
        if self.robots.allowed(self.start):
            return
        site = origin(self.start)
        if why := self.robots.unreachable.get(site):
            raise StartPageError(
                f"the start page {self.start} could not be fetched: {site}/robots.txt: {why} "
                "(a site whose robots.txt cannot be read counts as disallowed, RFC 9309)"
            )
        raise StartPageError(f"robots.txt of {site} disallows the start page {self.start}")

    def _fetch(self, url: str, depth: int) -> Page | None:
        """The page at `url`, or None when it was skipped or failed (and counted)."""
        try:
            fetched = self.fetcher.get(url, allow=lambda u: self._refuse_redirect(u, depth))
        except FetchError as e:
            if depth == 0:
                raise StartPageError(f"the start page {self.start} could not be fetched: {e}") from None
            (self.report.skip if e.skipped else self.report.fail)(url, e.reason, e.detail)
            return None
        final = normalize_url(fetched.final_url)
        if final in self.received:
            self.report.skip(url, "duplicate", f"redirects to {final}")
            return None
        if depth == 0:
            self.sites.add(origin(final))  # e.g. the index moved from http to https
        self.received.add(final)
        self.seen.add(final)
        html, encoding = decode_html(fetched.body, fetched.content_type)
        self.report.pages += 1
        return Page(final, depth, html, encoding, fetched.from_cache)

    def _follow(self, page: Page) -> list[tuple[str, int]]:
        """The page's new links that are followed, with their depth; the others are counted."""
        out = []
        for link in map(normalize_url, find_links(page.html, page.url)):
            if link in self.seen:
                continue
            self.seen.add(link)
            if why := self._refuse(link, page.depth + 1):
                self.report.skip(link, why)
            else:
                out.append((link, page.depth + 1))
        return out

    def _refuse(self, url: str, depth: int) -> str | None:
        """Why a link is not followed, or None."""
        if origin(url) not in self.sites:
            return "offsite"
        target = _target(url)
        if self.include and not any(rx.search(target) for rx in self.include):
            return "pattern"
        if any(rx.search(target) for rx in self.exclude):
            return "pattern"
        if depth > self.rules.max_depth:
            return "depth"
        return None if self.robots.allowed(url) else "robots"

    def _refuse_redirect(self, url: str, depth: int) -> str | None:
        """Why a redirect hop is not followed, or None; the start page may move to another site."""
        if depth > 0 and origin(url) not in self.sites:
            return "offsite"
        if normalize_url(url) in self.received:
            return "duplicate"
        return None if self.robots.allowed(url) else "robots"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's name)
        log.debug("local site: " + format, *args)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        log.debug("local site: error while answering %s", client_address, exc_info=True)


@contextlib.contextmanager
def serve_folder(folder: Path | str) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 at a free port while the block runs.

    Yields the base URL (`http://127.0.0.1:PORT/`); the server is shut down on exit,
    also when the block raises. It answers If-Modified-Since with 304, so the HTTP
    cache works for a local folder exactly as for a real site.
    """
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
