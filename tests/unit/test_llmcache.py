"""smolforge.llm.cache: append-only answers, fsynced per line, a torn last line after a crash."""

from __future__ import annotations

import json

from smolforge.llm.cache import RequestCache, Response

A = Response("first answer", "stop", 10, 3)
B = Response("second ✓", "length", 12, 5)


def test_answers_survive_a_reopen(tmp_path):
    path = tmp_path / "deep" / "requests.jsonl"
    with RequestCache(path) as cache:
        assert len(cache) == 0 and cache.get("a") is None
        cache.put("a", A, 1.23456)
        cache.put("b", B, 0.5)
        assert cache.get("a") == A
    with RequestCache(path) as cache:
        assert cache.get("a") == A and cache.get("b") == B and len(cache) == 2 and cache.n_damaged == 0
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"key": "a", "response": {"text": "first answer", "finish_reason": "stop",
                     "prompt_tokens": 10, "completion_tokens": 3}, "seconds": 1.235}  # fmt: skip


def test_a_torn_last_line_is_cut_off_before_appending(tmp_path):
    path = tmp_path / "requests.jsonl"
    with RequestCache(path) as cache:
        cache.put("a", A, 1.0)
    with path.open("a", encoding="utf-8") as f:
        f.write('{"key": "b", "response": {"te')  # the process died mid-write
    with RequestCache(path) as cache:
        assert cache.n_damaged == 1 and cache.get("b") is None
        cache.put("b", B, 1.0)
    with RequestCache(path) as cache:
        assert cache.n_damaged == 0 and cache.get("b") == B
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2


def test_a_damaged_line_is_skipped_and_a_later_answer_wins(tmp_path):
    path = tmp_path / "requests.jsonl"
    with RequestCache(path) as cache:
        cache.put("a", A, 1.0)
    with path.open("a", encoding="utf-8") as f:
        f.write("not json\n")
        f.write('{"key": "c", "response": {"text": "x"}}\n')  # missing fields
    with RequestCache(path) as cache:
        assert cache.n_damaged == 2 and len(cache) == 1
        cache.put("a", B, 1.0)
    with RequestCache(path) as cache:
        assert cache.get("a") == B
