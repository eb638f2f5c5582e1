"""smolforge.web.crawl: which links are followed, in what order, what is counted, the local site server."""

from __future__ import annotations

import pytest
import requests

from smolforge.web.crawl import CrawlReport, LinkRules, StartPageError, crawl, normalize_url, serve_folder
from smolforge.web.fetch import Fetcher, FetchPolicy
from tests.httpfixtures import html, page, redirect, serve, status

POLICY = FetchPolicy(
    user_agent="smolforge-test/0.1",
    delay_s=0.0,
    connect_timeout_s=1.0,
    read_timeout_s=0.5,
    max_page_s=2.0,
    max_retries=1,
    backoff_s=0.0,
    backoff_max_s=0.0,
    max_wait_s=1.0,
    max_redirects=3,
    max_bytes=100_000,
)
RULES = LinkRules(allowed_sites=[], include=[], exclude=[r"\.xml$"], max_pages=100, max_depth=2)


def links(*hrefs: str) -> str:
    return html("".join(f'<a href="{h}">{h}</a> ' for h in hrefs))


SITE = {
    "/robots.txt": page("User-agent: *\nDisallow: /secret\n", ctype="text/plain"),
    "/": links(
        "/a",
        "/b#part",
        "/feed.xml",
        "/secret",
        "https://elsewhere.invalid/",
        "mailto:me@x.org",
        "/a",
        "/doc.pdf",
    ),
    "/a": links("/c", "/"),
    "/b": links("/d", "/gone", "/moved"),
    "/c": links("/e"),  # depth 2: its links are depth 3
    "/d": html("d"),
    "/moved": redirect("/a"),  # lands on a page already crawled
    "/doc.pdf": page(b"%PDF", ctype="application/pdf"),
}


def run(base: str, rules: LinkRules = RULES, routes=None):
    report = CrawlReport()
    f = Fetcher(POLICY, None)
    pages = list(crawl(base + "/", f, rules, report))
    return [p.url.removeprefix(base) for p in pages], pages, report


def site(overrides=None):
    routes = {k: (v if callable(v) else page(v)) for k, v in SITE.items()}
    return serve({**routes, **(overrides or {})})


def test_breadth_first_in_document_order_and_every_skip_counted():
    with site() as srv:
        urls, pages, report = run(srv.base)
    assert urls == ["/", "/a", "/b", "/c", "/d"]
    assert [p.depth for p in pages] == [0, 1, 1, 2, 2]
    assert report.pages == 5
    assert dict(report.skipped) == {
        "pattern": 1,  # /feed.xml
        "robots": 1,  # /secret
        "offsite": 1,
        "not_html": 1,  # /doc.pdf
        "depth": 1,  # /e
        "duplicate": 1,  # /moved -> /a
    }
    assert dict(report.failed) == {"http_4xx": 1}  # /gone
    assert srv.hits("/secret") == 0 and srv.hits("/feed.xml") == 0 and srv.hits("/e") == 0
    assert srv.hits("/robots.txt") == 1 and srv.hits("/a") == 1
    reasons = {(u.removeprefix(srv.base), r) for u, r, _ in report.problems}
    assert ("/gone", "http_4xx") in reasons and ("/moved", "duplicate") in reasons


def test_max_pages_and_max_depth():
    with site() as srv:
        urls, _, report = run(srv.base, LinkRules([], [], [], max_pages=2, max_depth=2))
        assert urls == ["/", "/a"]
        assert report.skipped["limit"] == 4  # /b, /feed.xml, /doc.pdf and /c were queued
        urls, _, report = run(srv.base, LinkRules([], [], [], max_pages=100, max_depth=0))
        assert urls == ["/"] and report.skipped["depth"] == 5


def test_include_patterns_select_links():
    with site() as srv:
        urls, _, report = run(
            srv.base, LinkRules([], include=["^/[ab]$"], exclude=[], max_pages=100, max_depth=5)
        )
    assert urls == ["/", "/a", "/b"]
    assert report.skipped["pattern"] >= 4


def test_allowed_sites_are_followed_and_get_their_own_robots_txt():
    with serve({"/robots.txt": status(404), "/p": page(html("other"))}) as other:
        with site({"/": page(links("/a", other.url("/p")))}) as srv:
            urls, _, report = run(srv.base, LinkRules([other.base], [], [], 100, 1))
            assert other.base + "/p" in [srv.base + u for u in urls] or other.url("/p") in urls
            assert report.skipped["offsite"] == 0
    assert other.hits("/robots.txt") == 1 and other.hits("/p") == 1


def test_offsite_redirect_is_skipped():
    with site({"/": page(links("/out")), "/out": redirect("https://elsewhere.invalid/x")}) as srv:
        _, _, report = run(srv.base)
    assert report.skipped["offsite"] == 1 and report.failed.total() == 0


def test_start_page_failures_stop_the_crawl():
    with site({"/": status(500)}) as srv:
        with pytest.raises(StartPageError, match="start page .* could not be fetched: http_5xx"):
            run(srv.base)
        assert srv.hits("/") == 2  # max_retries 1
    with site({"/robots.txt": page("User-agent: *\nDisallow: /\n", ctype="text/plain")}) as srv:
        with pytest.raises(StartPageError, match="disallows the start page"):
            run(srv.base)
    with site({"/robots.txt": status(503)}) as srv:
        with pytest.raises(StartPageError, match="robots.txt: http_5xx"):
            run(srv.base)
        assert srv.hits("/") == 0


def test_start_page_redirect_to_another_origin_makes_it_the_site():
    with serve({"/": page(links("/x")), "/x": page(html("x"))}) as new:
        with serve({"/": redirect(new.url("/"))}) as old:
            urls, _, _ = run(old.base)
    assert urls == [new.url("/"), new.url("/x")]


@pytest.mark.parametrize(
    ("url", "norm"),
    [
        ("HTTP://Example.COM", "http://example.com/"),
        ("http://example.com:80/a?b=1#frag", "http://example.com/a?b=1"),
        ("https://u:p@example.com:443/a", "https://example.com/a"),
        ("http://127.0.0.1:8080/x", "http://127.0.0.1:8080/x"),
        ("http://[::1]:81/", "http://[::1]:81/"),
    ],
)
def test_normalize_url(url, norm):
    assert normalize_url(url) == norm


def test_serve_folder_serves_and_stops_also_on_error(tmp_path):
    (tmp_path / "index.html").write_text(html("home"))
    with pytest.raises(RuntimeError):
        with serve_folder(tmp_path) as base:
            assert base.startswith("http://127.0.0.1:")
            resp = requests.get(base + "index.html", timeout=2)
            assert resp.status_code == 200 and "home" in resp.text
            lm = resp.headers["Last-Modified"]
            again = requests.get(base + "index.html", headers={"If-Modified-Since": lm}, timeout=2)
            assert again.status_code == 304
            raise RuntimeError("boom")
    with pytest.raises(requests.ConnectionError):
        requests.get(base + "index.html", timeout=2)
