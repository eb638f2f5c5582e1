"""Stage format: turn a model's source records into chat records and rendered text.

Which formatter runs is the section's `task`. Task `nets` reads generate's splits; task
`chat` reads synthesize's folder (documents, conversations, QA; see
smolforge/chatformat.py). Both write OUT/train.jsonl and OUT/val.jsonl, one example per
line:

    {"id", "source", "messages": [{"role", "content"}, ...],
     "segments": [[text, loss], ...]}

`segments` is the example rendered in the chat style; `loss` marks the spans trained on.
No training prompt equals a held-out net (test, ood, stratified12): the `step` trace
shape would otherwise meet short test nets as intermediate states; such examples are
dropped and counted. OUT/meta.json records the trace shape, strategy and chat template
that later stages (and evaluate) must use.

Run by hand:
    python -m stages.format --model nets --in data/generate --out data/format/nets \
        --metrics metrics/format/nets.json
    python -m stages.format --model chat --in data/synthesize --out data/format/chat \
        --metrics metrics/format/chat.json
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smolforge import chat, chatformat, nets, netsformat
from smolforge.cli import StageError, produced_by, run
from smolforge.io import atomic_dir, meta_count, read_jsonl, read_meta, write_json, write_jsonl
from smolforge.log import setup
from smolforge.params import load_params, read_yaml

FORMAT_VERSION = 1
HELDOUT = ("test", "ood", "stratified12")


@dataclass(frozen=True)
class NetsFormatParams:
    task: Literal["nets"]
    trace: netsformat.TraceShape
    strategy: nets.Strategy
    blanks: bool  # pass: an annihilated pair stays in the line as "_ _"
    frame: int  # pass: pad prompts with "." to this many symbols (0: no padding)
    marks: bool  # pass: " =" after a line that more passes follow (false: stop when nothing changes)
    pack: bool  # pass: several training states a line, "." between (needs blanks, frame, no marks)
    border: bool  # pass: every line starts with "."
    chat_style: chat.ChatStyle
    loss_on: Literal["assistant", "all"]
    seed: int  # shuffles the order of training examples (and, with pack, which states share a line)

    def check(self) -> list[str]:
        if self.frame < 0:
            return [f"frame: expected >= 0, got {self.frame}"]
        return self.layout.problems()

    @property
    def layout(self) -> netsformat.Layout:
        """blanks, frame, marks, pack and border apply to the pass shape; the others
        ignore them, so switching `trace` is one param."""
        if self.trace != "pass":
            return netsformat.PLAIN
        return netsformat.Layout(self.blanks, self.frame, self.marks, self.pack, self.border)


@dataclass(frozen=True)
class ChatFormatParams:
    task: Literal["chat"]
    sources: dict[str, float]  # source -> weight (times each training example is used)
    chat_style: chat.RealStyle
    loss_on: Literal["assistant", "all"]
    system: str  # persona context as a system turn of every chat example ('' none)
    tokenizer: str  # base model whose tokenizer counts chunk tokens (and gives `template`)
    chunk_tokens: int
    val_share: float
    seed: int

    def check(self) -> list[str]:
        errors = [
            f"sources.{k}: unknown source (known: {', '.join(chatformat.SOURCES)})"
            for k in self.sources
            if k not in chatformat.SOURCES
        ]
        errors += [f"sources.{k}: weight must be >= 0" for k, w in self.sources.items() if w < 0]
        if not any(w > 0 for w in self.sources.values()):
            errors.append("sources: every weight is 0; nothing to train on")
        if self.chunk_tokens < 16:
            errors.append(f"chunk_tokens: expected >= 16, got {self.chunk_tokens}")
        if not 0 <= self.val_share < 1:
            errors.append(f"val_share: expected 0 <= val_share < 1, got {self.val_share}")
        return errors


def read_nets(folder: Path, split: str, meta: dict) -> list[str]:
    """Compact nets of one generate split; a malformed net names its line."""
    path = folder / f"{split}.jsonl"
    out = []
    records = read_jsonl(path, "generate", required=("net",), expected=meta_count(meta, split))
    for lineno, rec in enumerate(records, 1):
        net = nets.parse(str(rec["net"]))
        if net is None:
            raise StageError(
                f'{path}:{lineno}: field "net": {rec["net"]!r} is not a net of '
                f"space-separated A B C D (written by stage generate; run: dvc repro generate)"
            )
        out.append(net)
    return out


def record(rid: str, user: str, assistant: str, p: NetsFormatParams) -> dict:
    msgs = netsformat.messages(user, assistant)
    segments = chat.render(msgs, p.chat_style, p.loss_on)
    return {
        "id": rid,
        "source": "generate",
        "messages": msgs,
        "segments": [[t, loss] for t, loss in segments],
    }


def build(split_nets: list[str], split: str, p: NetsFormatParams, heldout: set[str]):
    """Rendered examples of one split, and how many were dropped as held-out prompts."""
    if p.layout.pack:
        return build_packed(split_nets, split, p, heldout)
    records, dropped = [], 0
    for i, net in enumerate(split_nets):
        for j, (user, assistant) in enumerate(netsformat.examples(net, p.trace, p.strategy, p.layout)):
            if netsformat.read_prompt(user) in heldout:
                dropped += 1
                continue
            records.append(record(f"{split}-{i:06d}-{j:03d}", user, assistant, p))
    return records, dropped


def build_packed(split_nets: list[str], split: str, p: NetsFormatParams, heldout: set[str]):
    """The states of every net's trace, held-out nets dropped, shuffled (so a line mixes
    nets and lengths) and packed into lines of random widths up to the frame."""
    states = [s for net in split_nets for s in nets.parallel_trace(net)]
    kept = [s for s in states if s not in heldout]
    rng = random.Random(f"{p.seed}-pack-{split}")
    rng.shuffle(kept)
    examples = netsformat.packed(kept, p.layout, rng)
    records = [record(f"{split}-p{k:06d}", user, answer, p) for k, (user, answer) in enumerate(examples)]
    return records, len(states) - len(kept)


def format_nets(args, p: NetsFormatParams, log) -> None:
    # ---- load and check every input before writing anything
    meta = read_meta(args.src, "generate", versions=(1,))
    heldout = {net for split in HELDOUT for net in read_nets(args.src, split, meta)}
    train_nets, val_nets = read_nets(args.src, "train", meta), read_nets(args.src, "val", meta)

    # ---- transform
    train, dropped_train = build(train_nets, "train", p, heldout)
    val, dropped_val = build(val_nets, "val", p, heldout)
    random.Random(p.seed).shuffle(train)

    # ---- write
    counts = {
        "train_nets": len(train_nets),
        "train_examples": len(train),
        "val_nets": len(val_nets),
        "val_examples": len(val),
        "dropped_heldout_prompts": dropped_train + dropped_val,
    }
    with atomic_dir(args.out) as tmp:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "val.jsonl", val)
        write_json(
            tmp / "meta.json",
            {
                "format_version": FORMAT_VERSION,
                "produced_by": "format",
                "task": "nets",
                "trace": p.trace,
                "strategy": p.strategy,
                "blanks": p.layout.blanks,
                "frame": p.layout.frame,
                "marks": p.layout.marks,
                "pack": p.layout.pack,
                "border": p.layout.border,
                "chat_style": p.chat_style,
                "chat_template": chat.template(p.chat_style),
                "counts": counts,
            },
        )
    write_json(args.metrics, {"counts": counts})
    log.info(
        "kept %s train / %s val examples (%s dropped: prompt is a held-out net)",
        f"{len(train):,}",
        f"{len(val):,}",
        f"{counts['dropped_heldout_prompts']:,}",
    )


def read_chat_sources(folder: Path, p: ChatFormatParams) -> dict[str, list[dict]]:
    """synthesize's records of every source with a weight; checked line by line."""
    meta = read_meta(folder, "synthesize", versions=(1,))
    files = {"essays": "documents.jsonl", "conversations": "conversations.jsonl", "qa": "qa.jsonl"}
    out = {}
    for source, weight in p.sources.items():
        if weight <= 0:
            continue
        path = folder / files[source]
        required = ("id", "title", "text") if source == "essays" else ("id", "messages")
        # synthesize counts its conversations and QA pairs (documents pass through uncounted)
        expected = meta_count(meta, "records", source)
        records = read_jsonl(path, "synthesize", required=required, expected=expected)
        for lineno, rec in enumerate(records, 1):
            problem = _record_problem(rec, source)
            if problem:
                raise StageError(f"{path}:{lineno}: {problem} {produced_by('synthesize')}")
        out[source] = records
    return out


def _record_problem(rec: dict, source: str) -> str | None:
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


def format_chat(args, p: ChatFormatParams, log) -> None:
    # ---- load and check every input before any work
    records = read_chat_sources(args.src, p)
    from smolforge import basemodel

    tok = basemodel.load_tokenizer(p.tokenizer)
    try:
        template = chat.style_template(p.chat_style, tok.chat_template)
    except ValueError as e:
        raise StageError(f"params.yaml: format.{args.model}.chat_style: {e}") from None
    style = chatformat.Style(
        p.chat_style, template, tok.bos_token or "", tok.eos_token or "", p.loss_on, p.system
    )

    # ---- render, dedupe, split, weigh
    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    examples = []
    if "essays" in records:
        examples += chatformat.essay_examples(records["essays"], style, p.chunk_tokens, count)
    for source in ("conversations", "qa"):
        if source in records:
            try:
                examples += chatformat.chat_examples(records[source], source, style)
            except ValueError as e:
                raise StageError(f"format: chat style {p.chat_style!r}: {e}") from None
    problems = chatformat.lint(examples, style)
    if problems:
        raise StageError(
            f"format: {len(problems)} rendered example(s) fail the lint:\n  " + "\n  ".join(problems[:20])
        )
    unique, n_dupes = chatformat.dedupe(examples)
    train, val = chatformat.split(unique, p.val_share, p.seed)
    weighted = chatformat.weigh(train, p.sources, p.seed)
    if not weighted:
        raise StageError(f"format: no training examples from {args.src} (sources {p.sources})")

    # ---- write
    def by_source(exs):
        return {s: sum(ex["source"] == s for ex in exs) for s in chatformat.SOURCES}

    counts = {
        "examples": len(examples),
        "duplicates_removed": n_dupes,
        "train": by_source(train),
        "train_weighted": by_source(weighted),
        "val": by_source(val),
        "train_examples": len(weighted),
        "val_examples": len(val),
    }
    with atomic_dir(args.out) as tmp:
        write_jsonl(tmp / "train.jsonl", weighted)
        write_jsonl(tmp / "val.jsonl", val)
        write_json(
            tmp / "meta.json",
            {
                "format_version": FORMAT_VERSION,
                "produced_by": "format",
                "task": "chat",
                "chat_style": p.chat_style,
                "chat_template": template,
                "stop": chat.STOP_WORDS[p.chat_style],
                "system": p.system,
                "bos": style.bos,
                "eos": style.eos,
                "counts": counts,
            },
        )
    write_json(args.metrics, {"counts": counts})
    log.info(
        "%d examples (%d duplicates removed): %d train (%d after weights), %d val",
        len(examples),
        n_dupes,
        len(train),
        len(weighted),
        len(val),
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="which params subsection: format.<model>")
    ap.add_argument("--in", dest="src", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("format")
    section = (read_yaml(Path(args.params)) or {}).get("format", {}).get(args.model)
    task = section.get("task") if isinstance(section, dict) else None
    if task == "chat":
        format_chat(args, load_params(f"format.{args.model}", ChatFormatParams, args.params), log)
    elif task == "nets":
        format_nets(args, load_params(f"format.{args.model}", NetsFormatParams, args.params), log)
    else:
        raise StageError(f"{args.params}: format.{args.model}.task: expected nets or chat, got {task!r}")


if __name__ == "__main__":
    raise SystemExit(run(main))
