"""Network faults not covered beside the stages' own tests: truncated bodies, redirect loops,
wrong charsets, huge and endless answers, trickles, garbage and hostile redirects, for the LLM
client, the synthesize stage and the scrape stage, each against a real loopback server."""

from __future__ import annotations

import dataclasses
import gzip
import json
import time

import pytest

from smolforge.core.cli import run
from smolforge.llm.client import MAX_ANSWER_BYTES, Client, RequestFailed
from stages import scrape, synthesize
from tests import fakeopenai as fake
from tests.httpfixtures import free_port, html, page, raw, redirect, sequence, serve, status, truncated
from tests.reliability.conftest import KEY, set_section, synth_argv
from tests.unit.test_llm import CHAT, POLICY

# ---------------------------------------------------------------- the LLM client


def ask(base_url: str, **policy) -> tuple[Client, object]:
    """(client, answer or RequestFailed) for one chat request; waits are recorded, not slept."""
    c = Client(base_url, "sk-test", dataclasses.replace(POLICY, **policy), sleep=lambda s: None)
    try:
        return c, c.ask(CHAT)
    except RequestFailed as e:
        return c, e


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (fake.truncated(), "connection"),
        (fake.charset("latin-1", declared="utf-8"), "bad_response"),  # not UTF-8 whatever it says
        (fake.endless(), "bad_response"),  # a huge answer: reading stops at MAX_ANSWER_BYTES
    ],
    ids=["truncated-body", "latin1-declared-utf8", "huge"],
)
def test_a_broken_answer_is_retried_then_counted_under_its_reason(fault, reason):
    with fake.serve() as srv:
        srv.inject(fault)
        c, got = ask(srv.base_url)
        assert got.text.startswith("1.")  # the retry got a good answer
        srv.inject(fault, fault, fault)
        c, got = ask(srv.base_url)
    assert isinstance(got, RequestFailed) and got.reason == reason
    assert len(srv.posts()) == 2 + 3  # bounded: 1 + max_retries attempts


def test_a_body_in_any_charset_json_allows_is_read_whatever_the_header_says():
    with fake.serve() as srv:
        srv.inject(fake.charset("utf-8", declared="iso-8859-1"), fake.charset("utf-16", declared="utf-8"))
        assert ask(srv.base_url)[1].text == "Un café naïve, déjà vu."
        assert ask(srv.base_url)[1].text == "Un café naïve, déjà vu."  # JSON detects UTF-16 itself


def test_a_trickling_answer_is_cut_off_after_timeout_s():
    """httpx's read timeout alone never fires on a server that sends a byte now and then."""
    with fake.serve() as srv:
        srv.inject(*[fake.endless(chunk=16, pause_s=0.05)] * 2)
        t0 = time.monotonic()
        _, got = ask(srv.base_url, timeout_s=1.0, max_retries=1)
        elapsed = time.monotonic() - t0
    assert isinstance(got, RequestFailed) and got.reason == "timeout"
    assert len(srv.posts()) == 2 and elapsed < 6


def test_a_huge_answer_stops_at_the_cap_not_at_the_end():
    with fake.serve() as srv:
        srv.inject(fake.endless(), fake.endless())
        t0 = time.monotonic()
        _, got = ask(srv.base_url, max_retries=1)
    assert isinstance(got, RequestFailed) and f"{MAX_ANSWER_BYTES:,} bytes" in got.detail
    assert time.monotonic() - t0 < 20


def test_a_redirect_loop_fails_after_a_bounded_number_of_requests():
    with fake.serve() as srv:
        srv.inject(*[fake.redirect_to_self()] * 100)
        _, got = ask(srv.base_url, max_retries=1)
    assert isinstance(got, RequestFailed) and got.reason == "connection"
    assert 2 <= len(srv.posts()) <= 2 * 21  # httpx follows at most 20 hops per attempt


# ---------------------------------------------------------------- the synthesize stage


def cache_lines(folder) -> int:
    path = folder / ".cache/synthesize/requests.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_synthesize_counts_failures_it_may_keep_and_loses_nothing_it_got(synth_dir, tiny_params):
    faults = [fake.truncated()] * 2 + [fake.endless()] * 2  # the first two requests fail both attempts
    with fake.serve() as srv:
        set_section(tiny_params, "synthesize", base_url=srv.base_url, max_failed_share=0.5)
        srv.inject(*faults)
        assert run(synthesize.main, synth_argv(tiny_params)) == 0
        metrics = json.loads((synth_dir / "metrics/synthesize.json").read_text())
        timing = json.loads((synth_dir / "metrics/synthesize_timing.json").read_text())
    assert {k: v for k, v in metrics["requests"]["failed"].items() if v} == {
        "connection": 1,
        "bad_response": 1,
    }
    assert metrics["records"] == {"conversations": 0, "qa": 1} and timing["retries"] == 2
    assert len(srv.posts()) == 4 + 2 and cache_lines(synth_dir) == 2  # bounded; both answers kept


def test_synthesize_stops_with_a_clear_error_and_the_rerun_asks_only_for_the_rest(
    synth_dir, tiny_params, caplog
):
    with fake.serve() as srv:
        set_section(tiny_params, "synthesize", base_url=srv.base_url)
        srv.inject(fake.redirect_to_self(), *[fake.redirect_to_self()] * 60)  # the first request loops
        assert run(synthesize.main, synth_argv(tiny_params)) == 2
        assert "1 of 4 requests failed after retries (connection 1)" in caplog.text
        assert not (synth_dir / "data/synthesize").exists() and not (synth_dir / "metrics").exists()
        assert cache_lines(synth_dir) == 3  # what arrived is kept
        srv.faults.clear()
        n_before = len(srv.posts())
        assert run(synthesize.main, synth_argv(tiny_params)) == 0
        assert len(srv.posts()) - n_before == 1  # only the one that failed
    assert KEY not in caplog.text


def test_synthesize_against_a_refused_port_fails_fast_and_clearly(synth_dir, tiny_params, caplog):
    set_section(tiny_params, "synthesize", base_url=f"http://127.0.0.1:{free_port()}/v1")
    t0 = time.monotonic()
    assert run(synthesize.main, synth_argv(tiny_params)) == 2
    assert time.monotonic() - t0 < 20
    assert (
        "3 of 3 requests failed after retries (connection 3)" in caplog.text
    )  # no answers: no answer requests
    assert not (synth_dir / "data/synthesize").exists()


def test_empty_completions_are_answers_that_the_checks_reject(synth_dir, tiny_params):
    with fake.serve(reply=lambda body: "") as srv:
        set_section(tiny_params, "synthesize", base_url=srv.base_url)
        assert run(synthesize.main, synth_argv(tiny_params)) == 0
    metrics = json.loads((synth_dir / "metrics/synthesize.json").read_text())
    assert metrics["records"] == {"conversations": 0, "qa": 0}
    assert sum(metrics["requests"]["failed"].values()) == 0 and metrics["conversations"]["in"] == 2
    assert len(srv.posts()) == 3  # no questions, so no answers to ask for


# ---------------------------------------------------------------- the scrape stage

SCRAPE_OUT = ["data/scrape", ".cache/scrape", "metrics/scrape.json", "metrics/scrape_timing.json"]


def essay(title: str) -> str:
    return html("<p>" + " ".join(f"{title}{i}" for i in range(40)) + "</p>", title)


HOSTILE = {
    "/good": page(essay("Good")),
    "/truncated": truncated(essay("Cut").encode()[:200], claimed=5000),
    "/garbage": raw(b"NONSENSE\r\n\r\n<html>"),
    "/bad-gzip": lambda h: h.send(200, b"<html>plain</html>", {"Content-Type": "text/html",
                                                                "Content-Encoding": "gzip"}),
    "/gzip": lambda h: h.send(200, gzip.compress(essay("Zipped").encode()), {"Content-Type": "text/html",
                                                                               "Content-Encoding": "gzip"}),
    "/empty": page(b""),
    "/to-file": redirect("file:///etc/passwd"),
    "/to-ftp": redirect("ftp://127.0.0.1/x"),
    "/weird-retry": sequence(status(503, {"Retry-After": "soon-ish"}), page(essay("Patient"))),
    "/flaky-truncated": sequence(truncated(b"<html>", claimed=900), page(essay("Second"))),
}  # fmt: skip


def test_scrape_finishes_on_a_hostile_site_and_counts_every_failure(tiny_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    index = page(html("".join(f'<a href="{p}">{p}</a>' for p in HOSTILE), "Index"))
    with serve({**HOSTILE, "/": index}) as srv:
        set_section(tiny_params, "scrape", source=srv.url("/"), min_words=20)
        out, cache, metrics, timing = SCRAPE_OUT
        argv = ["--params", str(tiny_params), "--out", out, "--cache", cache, "--metrics", metrics]
        assert run(scrape.main, [*argv, "--timing", timing]) == 0
    docs = [json.loads(x) for x in (tmp_path / out).joinpath("pages.jsonl").read_text().splitlines()]
    assert sorted(d["url"].removeprefix(srv.base) for d in docs) == [
        "/flaky-truncated",
        "/good",
        "/gzip",
        "/weird-retry",
    ]
    counts = json.loads((tmp_path / metrics).read_text())
    assert {k: v for k, v in counts["failed"].items() if v} == {"connection": 3, "bad_redirect": 2}
    assert counts["skipped"]["too_short"] == 2  # the index and the empty page
    hits = {p: srv.hits(p) for p in ("/truncated", "/garbage", "/bad-gzip", "/to-file", "/weird-retry")}
    assert hits == {"/truncated": 2, "/garbage": 2, "/bad-gzip": 2, "/to-file": 1, "/weird-retry": 2}
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert [w for w in written if not w.startswith((".cache/scrape/", "data/scrape/", "metrics/"))] == [
        "params.yaml"
    ]
