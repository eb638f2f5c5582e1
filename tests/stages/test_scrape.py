"""Stage scrape: the shipped site offline, a fault-injecting site, the cache, bad params."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pytest
import yaml

from smolforge.core.cli import run
from stages import scrape
from tests.conftest import ROOT, listing
from tests.httpfixtures import drop, free_port, html, huge, page, redirect, sequence, serve, slow, status

OUTPUTS = ["data/scrape", ".cache/scrape", "metrics/scrape.json", "metrics/scrape_timing.json"]
WESTERN = "It’s a “small” café — naïve, and the fiancée’s résumé."


def argv(params) -> list[str]:
    out, cache, metrics, timing = OUTPUTS
    return ["--params", str(params), "--out", out, "--cache", cache, "--metrics", metrics, "--timing", timing]


def set_params(path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    data["scrape"].update(changes)
    path.write_text(yaml.safe_dump(data))


def read(folder):
    records = [json.loads(line) for line in (folder / "data/scrape/pages.jsonl").read_text().splitlines()]
    metrics = json.loads((folder / "metrics/scrape.json").read_text())
    timing = json.loads((folder / "metrics/scrape_timing.json").read_text())
    return records, metrics, timing


@pytest.fixture
def workdir(tiny_params, tmp_path, monkeypatch):
    """tmp_path as the working directory, with the shipped site copied in (source: sites/essays)."""
    shutil.copytree(ROOT / "sites/essays", tmp_path / "sites/essays")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_shipped_site_offline(workdir, tiny_params):
    scrape.main(argv(tiny_params))
    records, metrics, timing = read(workdir)
    urls = [r["url"] for r in records]
    assert len(records) == 12 and urls == sorted(urls)
    assert all(u.startswith("sites/essays/") and u.endswith(".html") for u in urls)
    for r in records:
        assert set(r) == {"id", "source", "url", "title", "date", "text", "notes", "n_words"}
        assert r["id"] == hashlib.sha1(r["url"].encode()).hexdigest()[:16] and r["source"] == "scrape"
        assert r["title"] and r["date"] and r["notes"] == "" and r["n_words"] >= 150
        assert "[1]" not in r["text"] and "Notes" not in r["text"] and "Thanks to" not in r["text"]
        assert "Home" not in r["text"] and "var hits" not in r["text"]  # navigation and scripts
        assert "\n\n" in r["text"]  # paragraphs kept
    by_url = {r["url"]: r for r in records}
    weekend = by_url["sites/essays/weekend.html"]  # windows-1252, declared only in a meta tag
    assert "café" in weekend["text"] and "naïve" in weekend["text"] and "can’t" in weekend["text"]
    assert weekend["title"] == "Weekend Projects" and weekend["date"] == "2020-10"
    assert "sites/essays/drafts.html" not in by_url  # robots.txt
    assert metrics == {
        "documents": 12,
        "words": sum(r["n_words"] for r in records),
        "pages": 13,
        "skipped": {
            **dict.fromkeys(["depth", "limit", "duplicate", "too_large"], 0),
            **{"robots": 1, "offsite": 1, "pattern": 1, "not_html": 1, "too_short": 1},
        },
        "failed": dict.fromkeys(metrics["failed"], 0),
    }
    assert timing["from_network"] == 14 and timing["from_cache"] == 0  # robots.txt, index, 12 essays
    meta = json.loads((workdir / "data/scrape/meta.json").read_text())
    assert meta["counts"] == metrics
    reasons = {x["url"]: x["reason"] for x in meta["not_written"]}
    assert reasons == {
        "sites/essays/drafts.html": "robots",
        "sites/essays/index.html": "too_short",
        "sites/essays/reading-list.txt": "not_html",
        "sites/essays/rss.xml": "pattern",
        "https://example.com/smolforge": "offsite",
    }


def test_rerun_is_served_from_cache_with_identical_output(workdir, tiny_params):
    scrape.main(argv(tiny_params))
    first = {p: (workdir / p).read_bytes() for p in ("data/scrape/pages.jsonl", "data/scrape/meta.json")}
    first_metrics = (workdir / "metrics/scrape.json").read_bytes()
    scrape.main(argv(tiny_params))
    for p, data in first.items():
        assert (workdir / p).read_bytes() == data
    assert (workdir / "metrics/scrape.json").read_bytes() == first_metrics
    _, _, timing = read(workdir)
    assert timing["from_cache"] == 14 and timing["from_network"] == 0

    # an edited page is fetched again (the server sees a newer Last-Modified)
    page_path = workdir / "sites/essays/constraints.html"
    page_path.write_text(page_path.read_text().replace("Give someone", "Give anyone"))
    later = time.time() + 5
    os.utime(page_path, (later, later))
    scrape.main(argv(tiny_params))
    records, _, timing = read(workdir)
    assert timing["from_network"] == 1 and timing["from_cache"] == 13
    assert any(r["text"].startswith("Give anyone") for r in records)


def stray(folder) -> list[str]:
    """Paths under `folder` that are neither an output, inside one, a folder holding one, nor the params."""
    keep = {"params.yaml", "data", "metrics", ".cache"}
    return [
        p
        for p in listing(folder)
        if p not in keep
        and not p.startswith("sites")
        and not any(p == o or p.startswith(o + "/") for o in OUTPUTS)
    ]


def test_nothing_is_written_outside_the_outputs(workdir, tiny_params):
    site_before = {p: (workdir / "sites/essays" / p).read_bytes() for p in listing(workdir / "sites/essays")}
    scrape.main(argv(tiny_params))
    scrape.main(argv(tiny_params))
    assert stray(workdir) == []
    assert (workdir / ".cache/scrape").is_dir() and (workdir / "data/scrape/pages.jsonl").is_file()
    assert {
        p: (workdir / "sites/essays" / p).read_bytes() for p in listing(workdir / "sites/essays")
    } == site_before


def essay(title: str, extra: str = "") -> str:
    words = " ".join(f"{title}{i}" for i in range(40))  # distinct texts: duplicates are dropped
    return html(f"<p>{words} {extra}</p>", title)


FAULTS = {
    "/good": page(essay("Good")),
    "/wrong-charset": page(essay("Wrong", WESTERN).encode("cp1252"), ctype="text/html; charset=utf-8"),
    "/no-charset": page(essay("None", WESTERN).encode("cp1252"), ctype="text/html"),
    "/flaky": sequence(status(503), page(essay("Flaky"))),
    "/broken": status(500),
    "/busy": status(429, {"Retry-After": "0"}),
    "/busy-long": status(429, {"Retry-After": "3600"}),
    "/slow": slow(30, page(essay("Slow"))),
    "/dropped": drop(),
    "/loop": redirect("/loop2"),
    "/loop2": redirect("/loop"),
    "/big": huge(20_000_000, with_length=False),
    "/file.bin": page(b"\x00" * 1000, ctype="application/octet-stream"),
    "/private": page(essay("Private")),
    "/moved": redirect("/good"),
    "/robots.txt": page("User-agent: *\nDisallow: /private\n", ctype="text/plain"),
}


def test_fault_injecting_site_finishes_and_counts_every_failure(tiny_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = [p for p in FAULTS if p not in ("/robots.txt", "/loop2")] + ["/missing"]
    index = page(html("".join(f'<a href="{p}">{p}</a><br>' for p in paths), "Index"))
    with serve({**FAULTS, "/": index}) as srv:
        set_params(tiny_params, source=srv.url("/"), read_timeout_s=0.5, max_page_s=3.0, min_words=20)
        t0 = time.monotonic()
        assert run(scrape.main, argv(tiny_params)) == 0
        elapsed = time.monotonic() - t0
    records, metrics, timing = read(tmp_path)
    assert sorted(r["url"].removeprefix(srv.base) for r in records) == [
        "/flaky",
        "/good",
        "/no-charset",
        "/wrong-charset",
    ]
    for r in records:
        if "charset" in r["url"]:
            assert WESTERN in r["text"]
    assert {k: v for k, v in metrics["failed"].items() if v} == {
        "http_5xx": 1,
        "http_429": 1,
        "retry_after_too_long": 1,
        "timeout": 1,
        "connection": 1,
        "redirect_loop": 1,
        "http_4xx": 1,
    }
    assert {k: v for k, v in metrics["skipped"].items() if v} == {
        "robots": 1,
        "not_html": 1,
        "too_large": 1,
        "duplicate": 1,
        "too_short": 1,  # the index
    }
    # retries are bounded: max_retries 1 means two attempts, a Retry-After above the cap one
    attempts = {
        p: srv.hits(p) for p in ("/broken", "/busy", "/busy-long", "/slow", "/dropped", "/flaky", "/private")
    }
    assert attempts == {
        "/broken": 2,
        "/busy": 2,
        "/busy-long": 1,
        "/slow": 2,
        "/dropped": 2,
        "/flaky": 2,
        "/private": 0,
    }
    assert timing["retries"] == 5 and elapsed < 20
    meta = json.loads((tmp_path / "data/scrape/meta.json").read_text())
    reasons = {x["url"].removeprefix(srv.base): x["reason"] for x in meta["not_written"]}
    assert reasons["/busy-long"] == "retry_after_too_long" and reasons["/big"] == "too_large"
    assert reasons["/loop"] == "redirect_loop" and reasons["/moved"] == "duplicate"
    assert stray(tmp_path) == []


def test_bad_params_report_every_problem_and_write_nothing(tiny_params, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    set_params(tiny_params, source="no/such/folder", max_retries=-1, include=["("], notes="later", delay="1")
    assert run(scrape.main, argv(tiny_params)) == 2
    msg = caplog.text
    assert "scrape.delay: unknown key (did you mean delay_s?)" in msg
    assert "scrape.notes: expected one of 'drop', 'keep', 'field', got 'later'" in msg
    assert listing(tmp_path) == ["params.yaml"]
    set_params(tiny_params, notes="drop")
    del_key = yaml.safe_load(tiny_params.read_text())
    del del_key["scrape"]["delay"]
    tiny_params.write_text(yaml.safe_dump(del_key))
    assert run(scrape.main, argv(tiny_params)) == 2
    msg = caplog.text
    assert "scrape.source: 'no/such/folder' is neither an http(s) URL nor an existing folder" in msg
    assert "scrape.max_retries: expected a number >= 0" in msg
    assert "scrape.include: '(' is not a regular expression" in msg
    assert listing(tmp_path) == ["params.yaml"]


def test_unreachable_start_page_is_a_stage_error_and_writes_nothing(
    tiny_params, tmp_path, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)
    set_params(tiny_params, source=f"http://127.0.0.1:{free_port()}/essays/")
    t0 = time.monotonic()
    assert run(scrape.main, argv(tiny_params)) == 2
    assert time.monotonic() - t0 < 10
    assert "could not be fetched" in caplog.text and "scrape.source" in caplog.text
    assert listing(tmp_path) == ["params.yaml"]


def test_start_page_error_from_the_server(tiny_params, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with serve({"/": status(500)}) as srv:
        set_params(tiny_params, source=srv.url("/"))
        assert run(scrape.main, argv(tiny_params)) == 2
    assert f"the start page {srv.url('/')} could not be fetched: http_5xx" in caplog.text
    assert srv.hits("/") == 2
    assert not (tmp_path / "data").exists() and not (tmp_path / "metrics").exists()


def test_local_folder_without_index_html(tiny_params, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "site").mkdir()
    set_params(tiny_params, source="site")
    assert run(scrape.main, argv(tiny_params)) == 2
    assert "site/index.html not found" in caplog.text
    assert listing(tmp_path) == ["params.yaml", "site"]
