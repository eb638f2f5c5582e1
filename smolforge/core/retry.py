"""Bounded retries, shared by the network clients (scrape's fetcher, synthesize's client).

A client raises `Transient` for a failure worth another attempt (connection error,
timeout, 429, 5xx); `next_wait` turns it into the pause before the next attempt, or into
`GaveUp` when the attempts are spent or the server asks for a longer pause than allowed.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from typing import Protocol


class Transient(Exception):
    """A failure worth another attempt; `wait` is the server's Retry-After in seconds."""

    def __init__(self, reason: str, detail: str, wait: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.wait = reason, detail, wait


class GaveUp(Exception):
    """No further attempt: `reason` is a metrics key, `detail` says what happened."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Backoff(Protocol):
    """The retry fields of a client's policy (both clients' params carry them)."""

    max_retries: int  # attempts after the first
    backoff_s: float  # pause before the first retry; doubles with each retry
    backoff_max_s: float  # cap on that pause
    max_wait_s: float  # longest Retry-After honoured


def next_wait(e: Transient, attempt: int, policy: Backoff) -> float:
    """Seconds to pause after failed attempt number `attempt` (0-based), or raise GaveUp."""
    if e.wait is not None and e.wait > policy.max_wait_s:
        raise GaveUp(
            "retry_after_too_long", f"{e.detail}, Retry-After {e.wait:g} s > max_wait_s {policy.max_wait_s:g}"
        )
    if attempt >= policy.max_retries:
        raise GaveUp(e.reason, f"{e.detail} ({attempt + 1} attempts)")
    return e.wait if e.wait is not None else min(policy.backoff_s * 2**attempt, policy.backoff_max_s)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
