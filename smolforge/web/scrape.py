"""The scrape step: its params, and a crawl of a site (or a local folder served on
loopback) into clean, titled documents, with counts of what was skipped or failed.

A document is one page's record:

    {"id", "source": "scrape", "url", "title", "date", "text", "notes", "n_words"}

`id` is the first 16 hex digits of the sha1 of the URL; `text` is paragraphs joined by a
blank line; `date` (YYYY-MM-DD or YYYY-MM) may be null; `notes` is the trailing notes
section when notes is `field`, else "". For a local folder, `url` is the folder as
written in params plus the page's path (e.g. sites/essays/tools.html), so it does not
depend on the port.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from smolforge.core.cli import StageError
from smolforge.core.log import progress
from smolforge.web.crawl import (
    SKIP_REASONS,
    CrawlReport,
    LinkRules,
    Page,
    StartPageError,
    crawl,
    serve_folder,
)
from smolforge.web.extract import ExtractOptions, NotesMode, extract
from smolforge.web.fetch import FAIL_REASONS, Fetcher, FetchPolicy, FetchStats
from smolforge.web.httpcache import HttpCache

STAGE_SKIPS = ("too_short",)  # pages received whose body has fewer than min_words words


@dataclass(frozen=True)
class ScrapeParams:
    """params.yaml scrape: the source, then fetch politeness (FetchPolicy), link rules
    (LinkRules) and extraction (ExtractOptions), field for field."""

    source: str  # an http(s) start URL, or a local folder with index.html
    user_agent: str
    delay_s: float
    connect_timeout_s: float
    read_timeout_s: float
    max_page_s: float
    max_retries: int
    backoff_s: float
    backoff_max_s: float
    max_wait_s: float
    max_redirects: int
    max_bytes: int
    allowed_sites: list[str]
    include: list[str]
    exclude: list[str]
    max_pages: int
    max_depth: int
    min_words: int  # a shorter page (an index, a menu) is not a document
    max_link_density: float
    footnote_pattern: str
    notes: NotesMode
    notes_heading: str

    def check(self) -> list[str]:
        errors = []
        if not (is_url(self.source) or Path(self.source).is_dir()):
            errors.append(f"source: {self.source!r} is neither an http(s) URL nor an existing folder")
        if not self.user_agent.strip():
            errors.append("user_agent: must not be empty (sites identify crawlers by it)")
        for name in ("connect_timeout_s", "read_timeout_s", "max_page_s", "max_bytes", "max_pages"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}: expected a number > 0")
        non_negative = ("delay_s", "max_retries", "backoff_s", "backoff_max_s", "max_wait_s", "max_redirects")
        for name in (*non_negative, "max_depth", "min_words"):
            if getattr(self, name) < 0:
                errors.append(f"{name}: expected a number >= 0")
        if not 0 <= self.max_link_density <= 1:
            errors.append("max_link_density: expected a share between 0 and 1")
        errors += [
            f"allowed_sites: {s!r} is not an http(s) origin" for s in self.allowed_sites if not is_url(s)
        ]
        patterns = [("include", p) for p in self.include] + [("exclude", p) for p in self.exclude]
        patterns += [("footnote_pattern", self.footnote_pattern), ("notes_heading", self.notes_heading)]
        for name, pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                errors.append(f"{name}: {pattern!r} is not a regular expression ({e})")
        return errors


def is_url(s: str) -> bool:
    """Whether `s` is an absolute http(s) URL (else scrape.source names a folder)."""
    parts = urlsplit(s)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


@dataclass
class Scraped:
    """What a scrape found: the documents kept, sorted by URL, and what happened on the way."""

    documents: list[dict]
    report: CrawlReport  # pages received; links and pages skipped or failed, and why
    stats: FetchStats  # requests and cache hits: these vary by run, so only timing gets them

    def counts(self) -> dict:
        """The figures of meta.json and the metrics file (the same whatever the cache held)."""
        return {
            "documents": len(self.documents),
            "words": sum(r["n_words"] for r in self.documents),
            "pages": self.report.pages,
            "skipped": {k: self.report.skipped[k] for k in SKIP_REASONS + STAGE_SKIPS},
            "failed": {k: self.report.failed[k] for k in FAIL_REASONS},
        }

    def not_written(self) -> list[dict]:
        """Every URL skipped or failed, sorted, with its reason and detail."""
        return [{"url": u, "reason": r, "detail": d} for u, r, d in sorted(self.report.problems)]

    def summary(self) -> str:
        c, s = self.counts(), self.stats
        return (
            f"kept {c['documents']:,} documents ({c['words']:,} words) of {c['pages']:,} pages; "
            f"skipped {_nonzero(c['skipped'])}; failed {_nonzero(c['failed'])}; "
            f"{s.requests:,} requests, {s.from_cache:,} from cache"
        )


def _nonzero(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items() if v) or "none"


# ---------------------------------------------------------------- crawling


def scrape(p: ScrapeParams, cache_dir: Path) -> Scraped:
    """Crawl the source, extract every page, keep the documents (see `keep_documents`).

    `cache_dir` holds the HTTP cache (ETag / Last-Modified) kept between runs; it never
    changes the documents. URLs are made public before they are kept.
    """
    policy = FetchPolicy(
        p.user_agent, p.delay_s, p.connect_timeout_s, p.read_timeout_s, p.max_page_s, p.max_retries,
        p.backoff_s, p.backoff_max_s, p.max_wait_s, p.max_redirects, p.max_bytes,
    )  # fmt: skip
    rules = LinkRules(p.allowed_sites, p.include, p.exclude, p.max_pages, p.max_depth)
    opts = ExtractOptions(p.max_link_density, p.footnote_pattern, p.notes, p.notes_heading)
    report, records = CrawlReport(), []
    with site(p.source) as (start, public):
        fetcher = Fetcher(policy, HttpCache(cache_dir), cache_key=public)
        try:
            for page in progress(crawl(start, fetcher, rules, report), desc="scrape", unit="page"):
                records.append(make_record(public(page.url), page, opts))
        except StartPageError as e:
            raise StageError(f"scrape: {public(str(e))} (params.yaml: scrape.source)") from None
        finally:
            fetcher.close()
    report.problems = [(public(u), r, public(d)) for u, r, d in report.problems]
    return Scraped(keep_documents(records, p.min_words, report), report, fetcher.stats)


@contextlib.contextmanager
def site(source: str) -> Iterator[tuple[str, Callable[[str], str]]]:
    """(start URL, `public`) for the block; a local folder is served while it runs.

    `public` rewrites the local server's base URL (its port changes from run to run) to
    the folder as written in params, in URLs and messages alike.
    """
    if is_url(source):
        yield source, lambda s: s
        return
    folder = Path(source)
    if not (folder / "index.html").is_file():
        raise StageError(f"params.yaml: scrape.source: {folder}/index.html not found (the start page)")
    public_base = folder.as_posix().rstrip("/") + "/"
    with serve_folder(folder) as base:
        yield base + "index.html", lambda s: s.replace(base, public_base)


def make_record(url: str, page: Page, opts: ExtractOptions) -> dict:
    """The JSONL record of one page; `url` is its public URL."""
    doc = extract(page.html, opts)
    return {
        "id": hashlib.sha1(url.encode("utf-8")).hexdigest()[:16],
        "source": "scrape",
        "url": url,
        "title": doc.title,
        "date": doc.date,
        "text": doc.text,
        "notes": "\n\n".join(doc.notes),
        "n_words": len(doc.text.split()),
    }


def keep_documents(records: list[dict], min_words: int, report: CrawlReport) -> list[dict]:
    """Sorted by URL; short pages (an index, a menu) and repeated texts are counted and dropped."""
    kept, texts = [], set()
    for rec in sorted(records, key=lambda r: r["url"]):
        if rec["n_words"] < min_words:
            report.skip(rec["url"], "too_short", f"{rec['n_words']} words")
        elif rec["text"] in texts:
            report.skip(rec["url"], "duplicate", "same text as another page")
        else:
            texts.add(rec["text"])
            kept.append(rec)
    return kept
