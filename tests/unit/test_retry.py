"""smolforge.core.retry: the pause before each retry, the give-up rules, Retry-After parsing."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from smolforge.core.retry import GaveUp, Transient, next_wait, parse_retry_after


@dataclass(frozen=True)
class Policy:
    max_retries: int = 3
    backoff_s: float = 2.0
    backoff_max_s: float = 5.0
    max_wait_s: float = 60.0


def test_backoff_doubles_up_to_its_cap_then_gives_up_after_max_retries():
    e = Transient("http_5xx", "HTTP 503")
    assert [next_wait(e, a, Policy()) for a in range(3)] == [2.0, 4.0, 5.0]
    with pytest.raises(GaveUp) as info:
        next_wait(e, 3, Policy())
    assert info.value.reason == "http_5xx" and "(4 attempts)" in info.value.detail


def test_retry_after_wins_over_backoff_unless_it_is_too_long():
    assert next_wait(Transient("http_429", "HTTP 429", wait=7.0), 0, Policy()) == 7.0
    with pytest.raises(GaveUp) as info:
        next_wait(Transient("http_429", "HTTP 429", wait=3600.0), 0, Policy())
    assert info.value.reason == "retry_after_too_long"


def test_parse_retry_after():
    assert parse_retry_after("120") == 120.0 and parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
