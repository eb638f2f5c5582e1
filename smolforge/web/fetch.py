"""Polite, bounded, cached HTTP GETs for the crawler.

Politeness: a configurable User-Agent; at least `delay_s` between two requests to one
site (more if its robots.txt asks with Crawl-delay, see `set_delay`).
Bounds: connect and read timeouts plus a total time per response (a server that
trickles bytes cannot stall the crawl); `max_retries` more attempts after connection
errors, timeouts, 5xx and 429, waiting an exponential backoff (capped) or the server's
`Retry-After` (one above `max_wait_s` fails the page at once); at most `max_redirects`
hops, loops detected; responses streamed and dropped once past `max_bytes`; only HTML
where HTML is wanted. An `HttpCache` turns a rerun into conditional requests.
robots.txt itself is read by `smolforge.web.robots.Robots` through a `Fetcher`.

A page that is not fetched raises `FetchError` with a short `reason` (a metrics key).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urldefrag, urljoin, urlsplit

import requests
import urllib3

from smolforge.core.retry import GaveUp, Transient, next_wait, parse_retry_after
from smolforge.web.httpcache import HttpCache

log = logging.getLogger(__name__)

# Metrics keys, always reported (zeros included) so `dvc metrics diff` lines up.
FAIL_REASONS = (
    "timeout",  # connect / read timeout, or slower than max_page_s
    "connection",  # refused, reset, DNS, broken transfer
    "http_4xx",
    "http_429",  # still rate-limited after the retries
    "http_5xx",
    "http_other",  # a status the crawler does not handle (1xx, 204, 206, unexpected 304)
    "retry_after_too_long",  # the server asked to wait longer than max_wait_s
    "redirect_loop",
    "too_many_redirects",
    "bad_redirect",  # no Location, or not http(s)
)
HTML_TYPES = ("text/html", "application/xhtml+xml")
_REDIRECTS = (301, 302, 303, 307, 308)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_TIMEOUTS = (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
_CHUNK = 64 * 1024


class FetchError(Exception):
    """A page not fetched: `reason` is a metrics key; `skipped` tells a skip from a failure."""

    def __init__(self, reason: str, detail: str, *, skipped: bool = False, status: int | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.skipped, self.status = reason, detail, skipped, status


@dataclass(frozen=True)
class FetchPolicy:
    """Politeness and limits (values come from params.yaml, section scrape)."""

    user_agent: str
    delay_s: float  # between two requests to one site
    connect_timeout_s: float
    read_timeout_s: float  # longest silence while waiting for bytes
    max_page_s: float  # longest time to receive one whole response
    max_retries: int  # more attempts after a transient failure
    backoff_s: float  # wait before the first retry; doubles each time
    backoff_max_s: float
    max_wait_s: float  # longest Retry-After or Crawl-delay accepted
    max_redirects: int
    max_bytes: int  # per response, after decompression


@dataclass
class Fetched:
    """A 200 answer (or a cached body revalidated by 304)."""

    url: str  # as asked for
    final_url: str  # after redirects
    content_type: str
    body: bytes
    from_cache: bool


@dataclass
class FetchStats:
    """What the fetcher did; varies with the cache and the network, so not a stage output."""

    requests: int = 0  # sent, retries and redirect hops included
    from_network: int = 0  # 200 answers read
    from_cache: int = 0  # 304 answers served from the cache
    retries: int = 0
    waited_s: float = 0.0  # politeness delays, backoff and Retry-After


@dataclass
class _Answer:
    status: int
    content_type: str = ""
    body: bytes = b""
    location: str | None = None
    from_cache: bool = False


def origin(url: str) -> str:
    """scheme://host[:port] of a URL, lower-cased: the unit of politeness and robots.txt."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


class Fetcher:
    """One requests session with the policy's limits, a cache, and per-site pacing.

    `cache_key` maps a URL to the key it is cached under (a local site's port changes
    from run to run, its public name does not); `sleep` and `clock` are for tests.
    """

    def __init__(
        self,
        policy: FetchPolicy,
        cache: HttpCache | None,
        cache_key: Callable[[str], str] = str,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy, self.cache, self.cache_key = policy, cache, cache_key
        self.stats = FetchStats()
        self._sleep, self._clock = sleep, clock
        self._last: dict[str, float] = {}  # origin -> clock() at the end of its last request
        self._delay: dict[str, float] = {}  # origin -> delay raised by robots.txt
        self.session = requests.Session()
        self.session.headers["User-Agent"] = policy.user_agent

    def set_delay(self, site: str, delay_s: float) -> None:
        """Raise the delay between requests to `site` (an origin) above the policy's."""
        self._delay[site] = max(self.policy.delay_s, delay_s)

    def close(self) -> None:
        self.session.close()

    def get(
        self, url: str, *, html_only: bool = True, allow: Callable[[str], str | None] | None = None
    ) -> Fetched:
        """GET `url`, following redirects; raises FetchError.

        `allow(url)` is asked before each redirect hop; a reason it returns skips the page.
        """
        chain = [url]
        while True:
            ans = self._attempts(chain[-1], html_only)
            if ans.status not in _REDIRECTS:
                return Fetched(url, chain[-1], ans.content_type, ans.body, ans.from_cache)
            if not ans.location:
                raise FetchError("bad_redirect", f"HTTP {ans.status} without Location")
            nxt = urldefrag(urljoin(chain[-1], ans.location)).url
            if urlsplit(nxt).scheme not in ("http", "https"):
                raise FetchError("bad_redirect", f"redirect to {nxt}")
            if nxt in chain:
                raise FetchError("redirect_loop", " -> ".join([*chain, nxt]))
            if len(chain) > self.policy.max_redirects:
                raise FetchError(
                    "too_many_redirects", f"more than {self.policy.max_redirects} hops from {url}"
                )
            if allow is not None and (why := allow(nxt)):
                raise FetchError(why, f"redirect to {nxt}", skipped=True)
            chain.append(nxt)

    def _attempts(self, url: str, html_only: bool) -> _Answer:
        """One request, retried after transient failures within the policy's bounds."""
        p = self.policy
        for attempt in range(p.max_retries + 1):
            try:
                return self._once(url, html_only)
            except Transient as e:
                try:
                    wait = next_wait(e, attempt, p)
                except GaveUp as g:
                    raise FetchError(g.reason, g.detail) from None
                log.info("%s: %s; retry %d/%d in %.1f s", url, e.detail, attempt + 1, p.max_retries, wait)
                self.stats.retries += 1
                self._wait(wait)
        raise AssertionError("unreachable: the loop returns or raises")

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self.stats.waited_s += seconds
            self._sleep(seconds)

    def _once(self, url: str, html_only: bool, conditional: bool = True) -> _Answer:
        key = self.cache_key(url)
        entry = self.cache.get(key) if self.cache is not None and conditional else None
        site = origin(url)
        self._wait(
            self._last.get(site, float("-inf")) + self._delay.get(site, self.policy.delay_s) - self._clock()
        )
        self.stats.requests += 1
        start = self._clock()
        try:
            # env proxies never apply to a site on this machine (the local folder's server)
            proxies = {"http": "", "https": ""} if urlsplit(url).hostname in _LOOPBACK else None
            timeout = (self.policy.connect_timeout_s, self.policy.read_timeout_s)
            headers = entry.conditional_headers() if entry else {}
            resp = self.session.get(
                url, headers=headers, stream=True, allow_redirects=False, timeout=timeout, proxies=proxies
            )
            with contextlib.closing(resp):
                if resp.status_code == 304 and entry is not None and self.cache is not None:
                    body = self.cache.body(key, entry)
                    if body is None:  # damaged entry: ask again without conditions
                        return self._once(url, html_only, conditional=False)
                    self.stats.from_cache += 1
                    return _Answer(200, entry.content_type, body, from_cache=True)
                return self._answer(url, key, resp, html_only, start)
        except requests.RequestException as e:
            raise Transient(*_classify(e)) from None
        finally:
            self._last[site] = self._clock()

    def _answer(self, url: str, key: str, resp: requests.Response, html_only: bool, start: float) -> _Answer:
        status = resp.status_code
        if status in _REDIRECTS:
            return _Answer(status, location=resp.headers.get("Location"))
        if status == 429 or status >= 500:
            reason = "http_429" if status == 429 else "http_5xx"
            raise Transient(reason, f"HTTP {status}", parse_retry_after(resp.headers.get("Retry-After")))
        if status not in (200, 203):
            reason = "http_4xx" if 400 <= status < 500 else "http_other"
            raise FetchError(reason, f"HTTP {status}", status=status)
        ctype = resp.headers.get("Content-Type", "")
        mime = ctype.split(";")[0].strip().lower()
        if html_only and mime and mime not in HTML_TYPES:
            raise FetchError("not_html", f"Content-Type {mime}", skipped=True)
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.policy.max_bytes:
            raise FetchError("too_large", f"Content-Length {int(length):,} > max_bytes", skipped=True)
        body = self._read(resp, start)
        if html_only and not mime and not _looks_like_html(body):
            raise FetchError("not_html", "no Content-Type and not HTML", skipped=True)
        self.stats.from_network += 1
        if self.cache is not None:
            self.cache.put(key, resp.headers.get("ETag"), resp.headers.get("Last-Modified"), ctype, body)
        return _Answer(200, ctype, body)

    def _read(self, resp: requests.Response, start: float) -> bytes:
        """The whole body, stopping past max_bytes or max_page_s."""
        p, buf = self.policy, bytearray()
        while True:
            try:
                chunk = resp.raw.read1(_CHUNK, decode_content=True)
            except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as e:
                raise Transient(*_classify(e)) from None
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > p.max_bytes:
                raise FetchError("too_large", f"more than max_bytes {p.max_bytes:,}", skipped=True)
            if self._clock() - start > p.max_page_s:
                raise Transient("timeout", f"response slower than max_page_s {p.max_page_s:g} s")


def _classify(e: BaseException) -> tuple[str, str]:
    """(reason, detail) of a transport error; requests wraps read timeouts in ConnectionError."""
    inner = [e, *(a for a in e.args if isinstance(a, BaseException))]
    if any(isinstance(x, _TIMEOUTS) for x in inner):
        return "timeout", f"timed out ({type(e).__name__})"
    message = re.sub(r" object at 0x[0-9a-f]+", "", str(e))  # no memory addresses in meta.json
    return "connection", f"{type(e).__name__}: {message[:200]}"


def _looks_like_html(body: bytes) -> bool:
    head = body[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<body" in head or b"<p" in head
