"""The chat track's format step: synthesize's folder -> rendered chat examples.

Reads scrape's documents (passed through by synthesize), the conversations and the QA
pairs, renders them in the chosen chat style (smolforge.chat.corpus), removes
duplicates, splits train/val and applies the source weights. The persona (`system`, else
the one synthesize wrote the QA answers in) and the default task tag (task_tags) go into
the task record, so every runtime later defaults to what training used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from smolforge.chat import corpus
from smolforge.core import pretrained, styles
from smolforge.core.card import Task
from smolforge.core.cli import StageError, produced_by
from smolforge.core.io import meta_count, read_jsonl, read_meta
from smolforge.core.styles import Formatted

FILES = {"essays": "documents.jsonl", "conversations": "conversations.jsonl", "qa": "qa.jsonl"}


@dataclass(frozen=True)
class FormatParams:
    task: Literal["chat"]
    sources: dict[str, float]  # source -> weight (times each training example is used)
    chat_style: styles.RealStyle
    loss_on: Literal["assistant", "all"]
    system: str  # persona, a system turn of every chat ('': synthesize's QA persona, on QA pairs)
    tokenizer: str  # base model whose tokenizer counts chunk tokens (and gives `template`)
    chunk_tokens: int
    val_share: float
    seed: int

    def check(self) -> list[str]:
        errors = [
            f"sources.{k}: unknown source (known: {', '.join(corpus.SOURCES)})"
            for k in self.sources
            if k not in corpus.SOURCES
        ]
        errors += [f"sources.{k}: weight must be >= 0" for k, w in self.sources.items() if w < 0]
        if not any(w > 0 for w in self.sources.values()):
            errors.append("sources: every weight is 0; nothing to train on")
        if self.chunk_tokens < 16:
            errors.append(f"chunk_tokens: expected >= 16, got {self.chunk_tokens}")
        if not 0 <= self.val_share < 1:
            errors.append(f"val_share: expected 0 <= val_share < 1, got {self.val_share}")
        return errors


def read_sources(folder: Path, p: FormatParams) -> dict[str, list[dict]]:
    """synthesize's records of every source with a weight; checked line by line."""
    meta = read_meta(folder, "synthesize", versions=(1,))
    out = {}
    for source, weight in p.sources.items():
        if weight <= 0:
            continue
        path = folder / FILES[source]
        required = ("id", "title", "text") if source == "essays" else ("id", "messages")
        # synthesize counts its conversations and QA pairs (documents pass through uncounted)
        expected = meta_count(meta, "records", source)
        records = read_jsonl(path, "synthesize", required=required, expected=expected)
        for lineno, rec in enumerate(records, 1):
            problem = record_problem(rec, source)
            if problem:
                raise StageError(f"{path}:{lineno}: {problem} {produced_by('synthesize')}")
        out[source] = records
    return out


def data_persona(folder: Path) -> str:
    """The persona synthesize's QA answers were written in (its meta.json "persona", which
    synthesize records from synthesize.qa.persona); '' when it recorded none."""
    meta = read_meta(folder, "synthesize", versions=(1,))
    persona = meta.get("persona", "")
    if not isinstance(persona, str):
        raise StageError(
            f'{folder}/meta.json: field "persona": expected a string, got {persona!r} {produced_by("synthesize")}'
        )
    return persona.strip()


def persona_system(persona: str) -> str:
    """A persona ("the author of these essays, ...") as a system turn ("You are the author ...")."""
    return f"You are {persona.rstrip('.')}." if persona else ""


def record_problem(rec: dict, source: str) -> str | None:
    """What is wrong with one record of `source` (None: nothing)."""
    if source == "essays":
        bad = [k for k in ("title", "text") if not isinstance(rec[k], str)]
        return f'field "{bad[0]}": expected a string' if bad else None
    msgs = rec["messages"]
    if not isinstance(msgs, list) or not msgs:
        return 'field "messages": expected a non-empty list'
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            return f'field "messages[{i}].role": expected system, user or assistant'
        if not isinstance(m.get("content"), str):
            return f'field "messages[{i}].content": expected a string'
    if msgs[-1]["role"] != "assistant":
        return 'field "messages": the last turn must be the assistant\'s'
    return None


def render(
    records: dict[str, list[dict]], style: corpus.Style, p: FormatParams, count, qa_system: str = ""
) -> list[dict]:
    """Every record rendered in `style`, linted; a failure names the style and the example.

    qa_system: the system turn of QA examples when `style` has none (the persona their
    answers were written in)."""
    examples = []
    if "essays" in records:
        examples += corpus.essay_examples(records["essays"], style, p.chunk_tokens, count)
    for source in ("conversations", "qa"):
        if source in records:
            styled = replace(style, system=qa_system) if source == "qa" and not style.system else style
            try:
                examples += corpus.chat_examples(records[source], source, styled)
            except ValueError as e:
                raise StageError(f"format: chat style {p.chat_style!r}: {e}") from None
    problems = corpus.lint(examples, style)
    if problems:
        raise StageError(
            f"format: {len(problems)} rendered example(s) fail the lint:\n  " + "\n  ".join(problems[:20])
        )
    return examples


def format_records(src: Path, p: FormatParams, section: str) -> Formatted:
    """Read synthesize's folder, render, dedupe, split and weigh the examples."""
    records = read_sources(src, p)
    # the persona the QA answers were written in: format.chat.system where it is set, else
    # the one synthesize recorded, as the system turn of the QA examples (the default of
    # every runtime afterwards: the card's `system`, the GGUF, the Modelfile's SYSTEM)
    qa_system = p.system or (persona_system(data_persona(src)) if records.get("qa") else "")
    # the default task: the one the persona's answers were trained under when there are QA
    # examples (NanoPhi's [QA]), else conversation ([Chat]); the chat command's --tag picks another
    default_tag = styles.TASK_TAGS["qa"] if records.get("qa") else styles.TASK_TAGS["conversations"]
    tok = pretrained.load_tokenizer(p.tokenizer)
    try:
        template = styles.style_template(p.chat_style, tok.chat_template, default_tag)
    except ValueError as e:
        raise StageError(f"params.yaml: {section}.chat_style: {e}") from None
    style = corpus.Style(
        p.chat_style, template, tok.bos_token or "", tok.eos_token or "", p.loss_on, p.system
    )

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    examples = render(records, style, p, count, qa_system)
    unique, n_dupes = corpus.dedupe(examples)
    train, val = corpus.split(unique, p.val_share, p.seed)
    weighted = corpus.weigh(train, p.sources, p.seed)
    if not weighted:
        raise StageError(f"format: no training examples from {src} (sources {p.sources})")

    def by_source(exs):
        return {s: sum(ex["source"] == s for ex in exs) for s in corpus.SOURCES}

    counts = {
        "examples": len(examples),
        "duplicates_removed": n_dupes,
        "train": by_source(train),
        "train_weighted": by_source(weighted),
        "val": by_source(val),
        "train_examples": len(weighted),
        "val_examples": len(val),
    }
    task = Task(
        task="chat",
        chat_style=p.chat_style,
        chat_template=template,
        stop=styles.STOP_WORDS[p.chat_style],
        system=qa_system,
        layout={},
    )
    summary = (
        f"{len(examples)} examples ({n_dupes} duplicates removed): {len(train)} train "
        f"({len(weighted)} after weights), {len(val)} val"
    )
    return Formatted(weighted, val, task, counts, style.bos, style.eos, summary)
