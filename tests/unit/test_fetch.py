"""smolforge.web.fetch against a real loopback server: retries, limits, redirects, cache, robots.txt."""

from __future__ import annotations

import email.utils
import time

import pytest

from smolforge.core.retry import parse_retry_after as _retry_after
from smolforge.web.fetch import Fetcher, FetchError, FetchPolicy
from smolforge.web.httpcache import HttpCache
from smolforge.web.robots import Robots
from tests.httpfixtures import (
    free_port,
    html,
    huge,
    page,
    redirect,
    sequence,
    serve,
    slow,
    stall_body,
    status,
    trickle,
)

FAST = dict(
    user_agent="smolforge-test/0.1",
    delay_s=0.0,
    connect_timeout_s=1.0,
    read_timeout_s=2.0,  # generous: the machine may be busy; timeout tests set their own
    max_page_s=5.0,
    max_retries=2,
    backoff_s=1.0,
    backoff_max_s=3.0,
    max_wait_s=5.0,
    max_redirects=3,
    max_bytes=50_000,
)


def fetcher(cache=None, **overrides) -> tuple[Fetcher, list[float]]:
    """A fetcher whose waits are recorded instead of slept (no test waits for real)."""
    waits: list[float] = []
    return Fetcher(FetchPolicy(**{**FAST, **overrides}), cache, sleep=waits.append), waits


def failure(f: Fetcher, url: str, **kw) -> FetchError:
    with pytest.raises(FetchError) as e:
        f.get(url, **kw)
    return e.value


def test_page_is_fetched_with_the_user_agent():
    with serve({"/": page(html("hi"))}) as srv:
        f, waits = fetcher()
        got = f.get(srv.url("/"))
    assert got.body == html("hi").encode() and not got.from_cache
    assert got.content_type == "text/html; charset=utf-8"
    assert srv.log[0].headers["user-agent"] == "smolforge-test/0.1"
    assert waits == [] and f.stats.requests == 1 and f.stats.from_network == 1


def test_5xx_is_retried_max_retries_times_with_capped_exponential_backoff():
    with serve({"/": status(500)}) as srv:
        f, waits = fetcher(max_retries=4)
        e = failure(f, srv.url("/"))
    assert e.reason == "http_5xx" and not e.skipped and "5 attempts" in e.detail
    assert srv.hits("/") == 5
    assert waits == [1.0, 2.0, 3.0, 3.0]  # backoff_s doubling, capped at backoff_max_s
    assert f.stats.retries == 4


def test_a_transient_failure_recovers():
    with serve({"/": sequence(status(503), page(html("ok")))}) as srv:
        f, waits = fetcher()
        assert f.get(srv.url("/")).body == html("ok").encode()
    assert srv.hits("/") == 2 and waits == [1.0]


@pytest.mark.parametrize("retry_after", ["0", "1"])
def test_429_waits_as_long_as_retry_after_says(retry_after):
    with serve({"/": sequence(status(429, {"Retry-After": retry_after}), page(html("ok")))}) as srv:
        f, waits = fetcher()
        f.get(srv.url("/"))
    assert srv.hits("/") == 2
    assert waits == ([1.0] if retry_after == "1" else [])


def test_429_that_stays_is_failed_after_the_retries():
    with serve({"/": status(429, {"Retry-After": "1"})}) as srv:
        f, waits = fetcher()
        e = failure(f, srv.url("/"))
    assert e.reason == "http_429" and srv.hits("/") == 3 and waits == [1.0, 1.0]


def test_retry_after_above_the_cap_fails_at_once_without_waiting():
    with serve({"/": status(429, {"Retry-After": "3600"})}) as srv:
        f, waits = fetcher()
        e = failure(f, srv.url("/"))
    assert e.reason == "retry_after_too_long" and "3600" in e.detail
    assert srv.hits("/") == 1 and waits == []


def test_retry_after_as_an_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < _retry_after(when) <= 30
    assert _retry_after("120") == 120.0
    assert _retry_after("soon") is None and _retry_after(None) is None


def test_404_is_failed_without_retry():
    with serve({}) as srv:
        f, _ = fetcher()
        e = failure(f, srv.url("/nope"))
    assert e.reason == "http_4xx" and e.status == 404 and srv.hits("/nope") == 1


def test_silent_server_times_out_and_attempts_are_bounded():
    with serve({"/": slow(30, page(html("late")))}) as srv:
        f, _ = fetcher(max_retries=1, read_timeout_s=0.3)
        e = failure(f, srv.url("/"))
    assert e.reason == "timeout" and srv.hits("/") == 2


def test_body_that_stalls_times_out():
    with serve({"/": stall_body(30)}) as srv:
        f, _ = fetcher(max_retries=1, read_timeout_s=0.3)
        e = failure(f, srv.url("/"))
    assert e.reason == "timeout" and srv.hits("/") == 2


def test_trickling_server_is_cut_off_by_max_page_s():
    # a byte every 0.05 s never trips the 2 s read timeout; max_page_s (0.5 s) ends it
    with serve({"/": trickle(0.05, 1000)}) as srv:
        f, _ = fetcher(max_retries=0, max_page_s=0.5)
        e = failure(f, srv.url("/"))
    assert e.reason == "timeout" and "max_page_s" in e.detail and srv.hits("/") == 1


def test_connection_refused_is_retried_then_failed():
    f, waits = fetcher(max_retries=2)
    e = failure(f, f"http://127.0.0.1:{free_port()}/")
    assert e.reason == "connection" and f.stats.requests == 3 and len(waits) == 2


def test_redirects_are_followed_to_the_final_url():
    with serve({"/a": redirect("/b", 301), "/b": redirect("/c"), "/c": page(html("here"))}) as srv:
        f, _ = fetcher()
        got = f.get(srv.url("/a"))
    assert got.url == srv.url("/a") and got.final_url == srv.url("/c")


def test_redirect_loop_is_caught():
    with serve({"/a": redirect("/b"), "/b": redirect("/a")}) as srv:
        f, _ = fetcher()
        e = failure(f, srv.url("/a"))
    assert e.reason == "redirect_loop" and srv.hits("/a") == 1 and srv.hits("/b") == 1


def test_redirect_chain_longer_than_max_redirects_fails():
    routes = {f"/r{i}": redirect(f"/r{i + 1}") for i in range(10)}
    with serve(routes) as srv:
        f, _ = fetcher(max_redirects=3)
        e = failure(f, srv.url("/r0"))
    assert e.reason == "too_many_redirects" and len(srv.log) == 4


def test_redirect_refused_by_the_caller_is_a_skip():
    with serve({"/a": redirect("https://elsewhere.invalid/x")}) as srv:
        f, _ = fetcher()
        e = failure(f, srv.url("/a"), allow=lambda url: "offsite")
    assert e.reason == "offsite" and e.skipped


def test_redirect_without_location_fails():
    with serve({"/a": status(302)}) as srv:
        f, _ = fetcher()
        assert failure(f, srv.url("/a")).reason == "bad_redirect"


def test_non_html_is_skipped_without_reading_it():
    with serve({"/f.pdf": page(b"%PDF" + b"0" * 10_000_000, ctype="application/pdf")}) as srv:
        f, _ = fetcher()
        e = failure(f, srv.url("/f.pdf"))
    assert e.reason == "not_html" and e.skipped and f.stats.from_network == 0


def test_missing_content_type_is_sniffed():
    with serve({"/h": page(html("x"), ctype=""), "/b": page(b"\x00\x01binary", ctype="")}) as srv:
        f, _ = fetcher()
        assert f.get(srv.url("/h")).body == html("x").encode()
        assert failure(f, srv.url("/b")).reason == "not_html"


@pytest.mark.parametrize("with_length", [True, False])
def test_huge_page_is_skipped_and_reading_stops_at_max_bytes(with_length):
    with serve({"/big": huge(200_000_000, with_length)}) as srv:
        f, _ = fetcher()
        t0 = time.monotonic()
        e = failure(f, srv.url("/big"))
    assert e.reason == "too_large" and e.skipped and srv.hits("/big") == 1
    assert time.monotonic() - t0 < 5  # 200 MB were not read


def test_cache_revalidates_with_etag_and_serves_304_from_disk(tmp_path):
    cache = HttpCache(tmp_path / "cache")
    with serve({"/": page(html("cached"), etag='"v1"')}) as srv:
        first, _ = fetcher(cache)
        a = first.get(srv.url("/"))
        second, _ = fetcher(cache)
        b = second.get(srv.url("/"))
    assert not a.from_cache and b.from_cache and a.body == b.body
    assert a.content_type == b.content_type
    assert "if-none-match" not in srv.log[0].headers
    assert srv.log[1].headers["if-none-match"] == '"v1"'
    assert second.stats.from_cache == 1 and second.stats.from_network == 0


def test_cache_revalidates_with_last_modified(tmp_path):
    lm = "Sat, 01 Jun 2024 10:00:00 GMT"
    cache = HttpCache(tmp_path / "cache")
    with serve({"/": page(html("x"), last_modified=lm)}) as srv:
        fetcher(cache)[0].get(srv.url("/"))
        assert fetcher(cache)[0].get(srv.url("/")).from_cache
    assert srv.log[1].headers["if-modified-since"] == lm


def test_a_damaged_cache_entry_is_fetched_again(tmp_path):
    cache = HttpCache(tmp_path / "cache")
    with serve({"/": page(html("x"), etag='"v1"')}) as srv:
        fetcher(cache)[0].get(srv.url("/"))
        for body in (tmp_path / "cache").glob("*.body"):
            body.write_bytes(b"garbage")
        got = fetcher(cache)[0].get(srv.url("/"))
    assert got.body == html("x").encode() and not got.from_cache
    assert "if-none-match" not in srv.log[-1].headers


def test_politeness_delay_between_requests_to_one_site():
    with serve({"/a": page(html("a")), "/b": page(html("b"))}) as srv:
        f, waits = fetcher(delay_s=5.0)
        f.get(srv.url("/a"))
        f.get(srv.url("/b"))
    assert len(waits) == 1 and 4.0 < waits[0] <= 5.0


def test_robots_txt_is_obeyed_and_fetched_once():
    robots = "User-agent: *\nDisallow: /private\n\nUser-agent: smolforge-test\nDisallow: /mine\n"
    with serve({"/robots.txt": page(robots, ctype="text/plain")}) as srv:
        r = Robots(fetcher()[0])
        assert r.allowed(srv.url("/a.html"))
        assert not r.allowed(srv.url("/mine/x.html"))  # the group naming our user agent wins
        assert r.allowed(srv.url("/private/x.html"))
    assert srv.hits("/robots.txt") == 1


def test_robots_crawl_delay_raises_the_delay_up_to_max_wait_s():
    with serve({"/robots.txt": page("User-agent: *\nCrawl-delay: 60\n", ctype="text/plain")}) as srv:
        f, waits = fetcher()
        Robots(f).allowed(srv.url("/"))
        f.get(srv.url("/robots.txt"), html_only=False)
    assert len(waits) == 1 and 4.0 < waits[0] <= 5.0  # 60 s asked, max_wait_s 5


def test_robots_missing_allows_everything_unreachable_allows_nothing():
    with serve({"/robots.txt": status(404)}) as srv:
        assert Robots(fetcher()[0]).allowed(srv.url("/x"))
    with serve({"/robots.txt": status(500)}) as srv:
        r = Robots(fetcher(max_retries=0)[0])
        assert not r.allowed(srv.url("/x"))
        assert "http_5xx" in r.unreachable[srv.base]


def test_max_bytes_holds_after_decompression():
    import gzip

    bomb = gzip.compress(b"<p>" + b"a" * 20_000_000)  # about 20 kB on the wire

    def route(h):
        h.send(200, bomb, {"Content-Type": "text/html", "Content-Encoding": "gzip"})

    with serve({"/": route}) as srv:
        f, _ = fetcher()
        e = failure(f, srv.url("/"))
    assert e.reason == "too_large" and len(bomb) < FAST["max_bytes"]
