"""Prompts, parsing and filters for LLM-written training data (stage synthesize).

Two tasks:
- conversations (chat-builder): a plain completion continues a prompt whose last line
  opens a dialogue with the student's label (`STUDENT:`); the completion is parsed into
  `LABEL: text` turns and kept only if every turn is well formed, the turns alternate
  starting with the student, the first student turn uses the word, the last turn is the
  teacher's and no exclude entry occurs.
- qa (essay QA): a chat request asks for N questions about a document (or chunk), then
  one chat request per question asks for an answer grounded in the text, in a persona's
  voice. Questions and answers lose list markers and wrapping quotes, and are dropped
  when out of length bounds or near-duplicates of one kept before.

Every rejection is counted by reason in a `Funnel`, in the order the checks run, so
the yield after each filter follows from the counts.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

CONVERSATION_CHECKS = (
    "empty", "malformed_turn", "not_alternating", "too_short", "word_missing", "ends_with_student",
    "excluded", "near_duplicate",
)  # fmt: skip
QUESTION_CHECKS = ("not_a_question", "length", "near_duplicate", "surplus")
ANSWER_CHECKS = ("empty", "truncated", "length", "near_duplicate")

_SENTENCE_END = re.compile(r"""[.!?]["')\]’”]*(?=\s|$)""")
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»"}
_LIST_MARKER = re.compile(
    r"^(?:[-*•]+|\(?\d{1,2}[.):]|\(?[a-z][.)]|\*\*|(?:q(?:uestion)?\s*\d*|one|two|three|four|five|six"
    r"|seven|eight|nine|ten|first|second|third)\s*[:.)-])\s*",
    re.IGNORECASE,
)
_ANSWER_PREFIX = re.compile(r"^(?:a|answer)\s*:\s*", re.IGNORECASE)


def request_seed(seed: int, *parts: object) -> int:
    """A per-request seed from the stage seed and the request's identity (31 bits)."""
    digest = hashlib.sha256(json.dumps([seed, *parts], ensure_ascii=False).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def fill(template: str, **values: object) -> str:
    """Replace `{name}` for the given names only (other braces in a prompt stay as written)."""
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return pattern.sub(lambda m: str(values[m.group(1)]), template)


def mentions(text: str, word: str) -> bool:
    """Whether `text` uses `word` as a whole word, any case, with an -s/-es/-d/-ed/-ing ending."""
    return re.search(rf"(?<!\w){re.escape(word)}(?:s|es|d|ed|ing)?(?!\w)", text, re.IGNORECASE) is not None


class Excluder:
    """Exclude entries matched as whole words, any case; an entry ending in `*` is a stem.

    "kill" matches "Kill" but not "skill" or "killed"; "kill*" also matches "killed".
    """

    def __init__(self, entries: Sequence[str]) -> None:
        alts = [
            re.escape(e[:-1]) + r"\w*" if e.endswith("*") else re.escape(e) for e in entries if e.strip("*")
        ]
        self._re = re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE) if alts else None

    def hit(self, text: str) -> str | None:
        """The first excluded word in `text`, or None."""
        m = self._re.search(text) if self._re is not None else None
        return m.group(0) if m else None


class NearDuplicates:
    """Remembers texts; a text whose word 3-gram set overlaps a kept one by >= `threshold`
    (Jaccard) is a near-duplicate. An inverted index keeps it fast for many texts."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._sets: list[frozenset[tuple[str, ...]]] = []
        self._index: dict[tuple[str, ...], list[int]] = {}

    def add(self, text: str) -> bool:
        """Keep `text` and return True, unless it is a near-duplicate (then False)."""
        if self.repeats(text):
            return False
        grams = shingles(text)
        self._sets.append(grams)
        for g in grams:
            self._index.setdefault(g, []).append(len(self._sets) - 1)
        return True

    def repeats(self, text: str) -> bool:
        """Whether `text` is a near-duplicate of a kept text (it is not kept)."""
        grams = shingles(text)
        counts = Counter(i for g in grams for i in self._index.get(g, ()))
        return any(shared / len(grams | self._sets[i]) >= self.threshold for i, shared in counts.items())


def shingles(text: str) -> frozenset[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < 3:
        return frozenset([tuple(words)])
    return frozenset(tuple(words[i : i + 3]) for i in range(len(words) - 2))


class Funnel:
    """Counts items in and rejections by reason, in check order; `report()` for metrics."""

    def __init__(self, checks: Sequence[str]) -> None:
        self.checks, self.n_in, self.rejected = tuple(checks), 0, Counter()

    def reject(self, reason: str) -> None:
        assert reason in self.checks, f"unknown rejection reason {reason!r}"
        self.rejected[reason] += 1

    def report(self) -> dict:
        """{"in", "kept", "rejected": {reason: n}, "yield": {"<i>_<reason>": n}}, zeros included.

        `yield` counts what is left after each check; the number keeps the check order in
        a metrics file with sorted keys.
        """
        left, after = self.n_in, {}
        for i, reason in enumerate(self.checks, 1):
            left -= self.rejected[reason]
            after[f"{i}_{reason}"] = left
        return {
            "in": self.n_in,
            "kept": left,
            "rejected": {r: self.rejected[r] for r in self.checks},
            "yield": after,
        }


def strip_quotes(text: str) -> str:
    """Remove quotes that wrap the whole text (repeatedly), and surrounding space."""
    text = text.strip()
    while len(text) >= 2 and _QUOTES.get(text[0]) == text[-1] and text[0] not in text[1:-1]:
        text = text[1:-1].strip()
    return text


def trim_to_sentence(text: str) -> str:
    """`text` up to the end of its last complete sentence ("" if it has none)."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].rstrip() if ends else ""


# ---- conversations


@dataclass(frozen=True)
class DialogueRules:
    student_label: str  # e.g. STUDENT: its turns become "user" messages
    teacher_label: str  # e.g. TEACHER: its turns become "assistant" messages
    min_turns: int


def parse_conversation(
    opener: str, completion: str, finish_reason: str, word: str, rules: DialogueRules, excluder: Excluder
) -> tuple[list[dict] | None, str]:
    """(messages, "") for a kept dialogue, else (None, the first failed check).

    `opener` is the prompt's last line (the student's label the completion continues).
    The dialogue ends at the first blank line; a completion cut off by max_tokens loses
    its unfinished last sentence (and the turn, if nothing complete is left of it).
    """
    text = opener.strip() + completion
    if finish_reason == "length":
        head, _, last = text.rpartition("\n")
        label, sep, body = last.partition(":")
        kept = trim_to_sentence(body) if sep else ""
        text = head + (f"\n{label}: {kept.strip()}" if kept else "")
    lines = re.split(r"\n[ \t]*\n", text.strip(), maxsplit=1)[0].splitlines()
    roles = {rules.student_label.lower(): "user", rules.teacher_label.lower(): "assistant"}
    messages = []
    for line in lines:
        label, sep, content = line.partition(":")
        role = roles.get(label.strip().lower()) if sep else None
        if role is None or not content.strip():
            return None, "malformed_turn"
        messages.append({"role": role, "content": content.strip()})
    if not messages:
        return None, "empty"
    if any(m["role"] != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(messages)):
        return None, "not_alternating"
    if len(messages) < rules.min_turns:
        return None, "too_short"
    if not mentions(messages[0]["content"], word):
        return None, "word_missing"
    if messages[-1]["role"] != "assistant":
        return None, "ends_with_student"
    if any(excluder.hit(m["content"]) for m in messages):
        return None, "excluded"
    return messages, ""


# ---- qa


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Paragraphs (blank-line separated) packed into chunks of at most `max_chars`
    (0: the whole text); a longer paragraph is split at sentence ends, then at spaces."""
    if max_chars <= 0 or len(text) <= max_chars:
        return [text] if text.strip() else []
    pieces: list[str] = []
    for para in (p.strip() for p in text.split("\n\n")):
        pieces += _split_long(para, max_chars) if len(para) > max_chars else [para] if para else []
    chunks, cur = [], ""
    for piece in pieces:
        if cur and len(cur) + 2 + len(piece) > max_chars:
            chunks.append(cur)
            cur = ""
        cur = f"{cur}\n\n{piece}" if cur else piece
    return chunks + ([cur] if cur else [])


def _split_long(para: str, max_chars: int) -> list[str]:
    out, cur = [], ""
    for word in para.split(" "):
        end = cur.endswith((".", "!", "?"))
        if cur and (len(cur) + 1 + len(word) > max_chars or (end and len(cur) > max_chars // 2)):
            out.append(cur)
            cur = ""
        cur = f"{cur} {word}" if cur else word
    return out + ([cur] if cur else [])


def parse_questions(completion: str, bounds: Sequence[int]) -> list[tuple[str, str]]:
    """(question, "") or (line, reason) for each non-empty line of a completion.

    A question loses list markers ("1.", "-", "Q1:") and wrapping quotes and must end
    with "?" and have a length within `bounds` ([min, max] characters).
    """
    out = []
    for line in completion.splitlines():
        q = strip_quotes(_LIST_MARKER.sub("", line.strip()).strip("*_ ").strip())
        if not q:
            continue
        if not q.endswith("?"):
            out.append((line, "not_a_question"))
        elif not bounds[0] <= len(q) <= bounds[1]:
            out.append((q, "length"))
        else:
            out.append((q, ""))
    return out


def clean_answer(completion: str, finish_reason: str, bounds: Sequence[int]) -> tuple[str | None, str]:
    """(answer, "") or (None, reason): wrapping quotes and an "Answer:" prefix removed; an
    answer cut off by max_tokens ends at its last complete sentence; length in `bounds`."""
    text = strip_quotes(_ANSWER_PREFIX.sub("", strip_quotes(completion)))
    if not text:
        return None, "empty"
    if finish_reason == "length":
        text = trim_to_sentence(text)
        if not text:
            return None, "truncated"
    if not bounds[0] <= len(text) <= bounds[1]:
        return None, "length"
    return text, ""
