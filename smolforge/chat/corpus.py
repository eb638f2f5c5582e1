"""The chat model's training examples: essays as completion text, dialogues as chat.

Sources (the records of synthesize's folder):

    essays         documents.jsonl (scrape's pages): chunked by tokens at paragraphs,
                   each chunk headed by its title, every token trained
    conversations  conversations.jsonl: chat-builder's student/teacher dialogues
    qa             qa.jsonl: questions about the essays answered in the author's persona

Every example is rendered with the chat style's template (smolforge.core.styles), so training
text and inference prompts come from one rule. Duplicates are removed before the
train/val split, so no text is in both; source weights then repeat (or thin) training
examples only, never validation ones.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from smolforge.core import styles

SOURCES = ("essays", "conversations", "qa")
_TAGS = {"conversations": "Chat", "qa": "QA"}  # NanoPhi-style task tags


@dataclass(frozen=True)
class Style:
    """What rendering needs: the template text and the tokenizer's BOS/EOS strings."""

    name: str
    template: str
    bos: str
    eos: str
    loss_on: str
    system: str  # persona context, '' for none


def chunk_document(title: str, text: str, budget: int, count: Callable[[str], int]) -> list[str]:
    """Split a document at paragraphs into bodies of at most `budget` tokens with its title.

    `count` gives a string's token count. Paragraphs are packed greedily; one longer than
    the budget on its own is cut at words. The title line is part of every chunk's cost.
    """
    room = max(budget - count(f"{title}\n\n"), 1)
    pieces = []
    for para in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not para:
            continue
        if count(para) <= room:
            pieces.append(para)
            continue
        words, cur = para.split(), []
        for w in words:
            if cur and count(" ".join([*cur, w])) > room:
                pieces.append(" ".join(cur))
                cur = []
            cur.append(w)
        if cur:
            pieces.append(" ".join(cur))
    chunks, cur = [], []
    for piece in pieces:
        if cur and count("\n\n".join([*cur, piece])) > room:
            chunks.append("\n\n".join(cur))
            cur = []
        cur.append(piece)
    if cur:
        chunks.append("\n\n".join(cur))
    return chunks


def essay_examples(docs: list[dict], style: Style, budget: int, count) -> list[dict]:
    out = []
    for doc in docs:
        for j, body in enumerate(chunk_document(doc["title"], doc["text"], budget, count)):
            out.append(
                {
                    "id": f"essay-{doc['id']}-{j:02d}",
                    "source": "essays",
                    "text": f"{doc['title']}\n\n{body}",
                    "segments": styles.completion(doc["title"], body, style.name, style.bos, style.eos),
                }
            )
    return out


def chat_examples(records: list[dict], source: str, style: Style) -> list[dict]:
    out = []
    for rec in records:
        messages = list(rec["messages"])
        if style.system:
            messages = [{"role": "system", "content": style.system}, *messages]
        extra = {"tag": _TAGS[source]}
        if source == "conversations" and rec.get("about"):
            extra["term"] = str(rec["about"])
        segs = styles.segments(style.template, messages, style.bos, style.eos, style.loss_on, **extra)
        out.append({"id": str(rec["id"]), "source": source, "messages": messages, "segments": segs})
    return out


def _norm(example: dict) -> str:
    text = "".join(t for t, _ in example["segments"])
    return " ".join(text.lower().split())


def dedupe(examples: list[dict]) -> tuple[list[dict], int]:
    """Keep the first of examples whose rendered text is the same up to case and spacing."""
    seen, out = set(), []
    for ex in examples:
        key = hashlib.sha256(_norm(ex).encode()).hexdigest()
        if key not in seen:
            seen.add(key)
            out.append(ex)
    return out, len(examples) - len(out)


def split(examples: list[dict], val_share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded split by example; at least one validation example when there are two."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = round(len(examples) * val_share)
    if val_share > 0 and len(examples) >= 2:
        n_val = max(n_val, 1)
    val_ids = set(order[:n_val])
    train = [ex for i, ex in enumerate(examples) if i not in val_ids]
    val = [ex for i, ex in enumerate(examples) if i in val_ids]
    return train, val


def weigh(train: list[dict], weights: dict[str, float], seed: int) -> list[dict]:
    """Repeat each training example floor(w) times, plus once more with chance frac(w).

    The result is shuffled (seeded), so repeats of one example are spread over an epoch.
    """
    rng = random.Random(seed)
    out = []
    for ex in train:
        w = weights[ex["source"]]
        n = int(w) + (1 if rng.random() < w - int(w) else 0)
        out.extend([ex] * n)
    rng.shuffle(out)
    return out


def lint(examples: list[dict], style: Style) -> list[str]:
    """Problems in rendered examples: a doubled BOS, a chat that never ends its last
    assistant turn (no EOS or stop word), a completion without EOS."""
    problems = []
    stops = [style.eos, *styles.STOP_WORDS.get(style.name, [])]
    for ex in examples:
        text = "".join(t for t, _ in ex["segments"])
        if style.bos and text.startswith(style.bos + style.bos):
            problems.append(f"{ex['id']}: starts with BOS twice")
        if "text" in ex:
            if style.eos and not text.endswith(style.eos):
                problems.append(f"{ex['id']}: completion text does not end with EOS")
            continue
        trained = [t for t, loss in ex["segments"] if loss]
        if not trained:
            problems.append(f"{ex['id']}: nothing to train on (no assistant turn)")
        elif not any(s and s in trained[-1] for s in stops):
            problems.append(f"{ex['id']}: last assistant turn has no EOS or stop word {stops}")
    return problems
