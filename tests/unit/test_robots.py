"""smolforge.web.robots on loopback sites: `*` and `$` patterns, longest match, the product token."""

from __future__ import annotations

import urllib.robotparser

from smolforge.web.crawl import CrawlReport, LinkRules, crawl
from smolforge.web.fetch import Fetcher, FetchPolicy
from smolforge.web.robots import Robots, product_token
from tests.httpfixtures import html, page, serve

POLICY = FetchPolicy(
    user_agent="smolforge-test/0.1 (+mailto:me@example.com)",
    delay_s=0.0,
    connect_timeout_s=1.0,
    read_timeout_s=2.0,
    max_page_s=5.0,
    max_retries=0,
    backoff_s=0.0,
    backoff_max_s=0.0,
    max_wait_s=5.0,
    max_redirects=3,
    max_bytes=100_000,
)

# Rules in an order where the first match and the longest match disagree.
WILDCARDS = """\
User-agent: *
Disallow: /*?print=
Disallow: /drafts/
Allow: /drafts/*.html$
Disallow: /*.pdf$
Disallow: /p
Allow: /p/public

User-agent: example
Disallow: /
"""

VERDICTS = {
    "/essay.html": True,
    "/essay.html?print=1": False,  # `*` spans the path, the query is matched too
    "/essay.html?lang=en&print=yes": True,  # the rule is the string `?print=`, not a query parser
    "/essay.html?printer=1": True,
    "/drafts/": False,
    "/drafts/notes": False,
    "/drafts/plan.html": True,  # Allow /drafts/*.html$ is longer than Disallow /drafts/
    "/drafts/plan.html?v=2": False,  # `$` anchors the end: the Allow no longer matches
    "/drafts/a/b.html": True,
    "/files/report.pdf": False,
    "/files/report.pdf.html": True,  # `$`: .pdf must end the URL
    "/p/public/x": True,  # the longest match wins, not the first
    "/p/private": False,
}


def test_product_token():
    assert product_token("smolforge-scrape/0.1 (+mailto:you@example.com)") == "smolforge-scrape"
    assert product_token("  mybot  ") == "mybot"


def test_wildcard_and_end_anchor_rules_are_obeyed():
    with serve({"/robots.txt": page(WILDCARDS, ctype="text/plain")}) as srv:
        robots = Robots(Fetcher(POLICY, None))
        got = {path: robots.allowed(srv.url(path)) for path in VERDICTS}
    assert got == VERDICTS
    assert srv.hits("/robots.txt") == 1
    # the standard library's parser reads these rules literally and takes the first match:
    # it would fetch a print view and refuse an allowed draft
    std = urllib.robotparser.RobotFileParser()
    std.parse(WILDCARDS.splitlines())
    assert std.can_fetch("smolforge-test", "/essay.html?print=1")
    assert not std.can_fetch("smolforge-test", "/drafts/plan.html")


def test_groups_match_the_product_token_not_the_rest_of_the_user_agent():
    rules = "User-agent: example\nDisallow: /\n\nUser-agent: SMOLFORGE-TEST\nDisallow: /mine\n"
    with serve({"/robots.txt": page(rules, ctype="text/plain")}) as srv:
        robots = Robots(Fetcher(POLICY, None))
        # "example" appears in the contact address, but is not our product token
        assert robots.allowed(srv.url("/a.html"))
        assert not robots.allowed(srv.url("/mine/x"))  # the group naming us, in any case


def test_a_crawl_never_requests_what_wildcard_rules_disallow():
    hrefs = [*VERDICTS, "/drafts/plan.html?v=2#top"]
    index = html("".join(f'<a href="{h}">{h}</a> ' for h in hrefs))
    routes = {"/robots.txt": page(WILDCARDS, ctype="text/plain"), "/": page(index)}
    routes |= {path: page(html(path)) for path in VERDICTS}
    with serve(routes) as srv:
        report = CrawlReport()
        rules = LinkRules(allowed_sites=[], include=[], exclude=[], max_pages=100, max_depth=1)
        pages = list(crawl(srv.url("/"), Fetcher(POLICY, None), rules, report))
    fetched = {r.path for r in srv.log} - {"/", "/robots.txt"}
    assert fetched == {path for path, ok in VERDICTS.items() if ok}
    assert len(pages) == 1 + len(fetched)
    assert report.skipped["robots"] == sum(not ok for ok in VERDICTS.values())
