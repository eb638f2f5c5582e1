"""smolforge.web.httpcache: what is stored, what a conditional request sends, damaged entries."""

from __future__ import annotations

from smolforge.web.httpcache import HttpCache


def test_round_trip_and_conditional_headers(tmp_path):
    cache = HttpCache(tmp_path / "c")
    cache.put("http://x/a", '"e1"', "Sat, 01 Jun 2024 10:00:00 GMT", "text/html", b"<p>a</p>")
    entry = cache.get("http://x/a")
    assert entry is not None and entry.content_type == "text/html"
    assert cache.body("http://x/a", entry) == b"<p>a</p>"
    assert entry.conditional_headers() == {
        "If-None-Match": '"e1"',
        "If-Modified-Since": "Sat, 01 Jun 2024 10:00:00 GMT",
    }
    assert cache.get("http://x/b") is None


def test_answers_without_validators_are_not_stored(tmp_path):
    cache = HttpCache(tmp_path / "c")
    cache.put("http://x/a", None, None, "text/html", b"x")
    assert cache.get("http://x/a") is None and not (tmp_path / "c").exists()


def test_damaged_entries_are_misses(tmp_path):
    cache = HttpCache(tmp_path / "c")
    cache.put("http://x/a", '"e1"', None, "text/html", b"body")
    entry = cache.get("http://x/a")
    (body,) = (tmp_path / "c").glob("*.body")
    body.write_bytes(b"changed")
    assert cache.body("http://x/a", entry) is None
    (meta,) = (tmp_path / "c").glob("*.json")
    meta.write_text("{not json")
    assert cache.get("http://x/a") is None
    assert not list((tmp_path / "c").glob("*.tmp"))
