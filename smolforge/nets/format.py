"""The nets track's format step: generate's splits -> rendered chat examples.

Every training and validation net becomes examples of the chosen layout
(smolforge.nets.layouts). No training prompt equals a held-out net (test, ood,
stratified12): the `step` trace would otherwise meet short test nets as intermediate
states; such examples are dropped and counted.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smolforge.core import styles
from smolforge.core.card import Task
from smolforge.core.cli import StageError, produced_by
from smolforge.core.io import meta_count, read_jsonl, read_meta
from smolforge.core.styles import Formatted
from smolforge.nets import layouts, reducer

HELDOUT = ("test", "ood", "stratified12", "swaps")


@dataclass(frozen=True)
class FormatParams:
    task: Literal["nets"]
    layout: layouts.Layout
    chat_style: styles.ChatStyle
    loss_on: Literal["assistant", "all"]
    seed: int  # shuffles the order of training examples (and, with pack, which states share a line)


def read_nets(folder: Path, split: str, meta: dict) -> list[str]:
    """Compact nets of one generate split; a malformed net names its line."""
    path = folder / f"{split}.jsonl"
    out = []
    records = read_jsonl(path, "generate", required=("net",), expected=meta_count(meta, split))
    for lineno, rec in enumerate(records, 1):
        net = reducer.parse(str(rec["net"]))
        if net is None:
            raise StageError(
                f'{path}:{lineno}: field "net": {rec["net"]!r} is not a net of '
                f"space-separated A B C D {produced_by('generate')}"
            )
        out.append(net)
    return out


def record(rid: str, user: str, assistant: str, p: FormatParams, jumps: list | None = None) -> dict:
    msgs = layouts.messages(user, assistant)
    if p.layout.effective().interleave:
        segments = layouts.interleaved_segments(user, assistant, styles.BOS, styles.EOS)
    else:
        segments = styles.render(msgs, p.chat_style, p.loss_on)
    rec = {
        "id": rid,
        "source": "generate",
        "messages": msgs,
        "segments": [[t, loss] for t, loss in segments],
    }
    if jumps:
        rec["position_jumps"] = jumps  # [[segment index, jump], ...]: smolforge.core.positions
    return rec


def spread_jumps(user: str, spread: int, rng: random.Random) -> list[list[int]]:
    """Random position jumps before each net of an interleaved packed line but the first
    (at the segment of its first input symbol, p_i: segment 2i): the line's last id lands
    anywhere from its token count up to `spread` (uniform), cut at random points."""
    symbols = user.split(" ")
    starts = [i for i in range(2, len(symbols)) if symbols[i - 1] == layouts.FILL]  # after a separator
    room = spread - (2 * len(symbols) + 3)  # ids left once the line's tokens are counted
    if not starts or room <= 0:
        return []
    total = rng.randint(0, room)
    cuts = sorted(rng.randint(0, total) for _ in range(len(starts) - 1))
    sizes = [b - a for a, b in zip([0] + cuts, cuts + [total])]
    return [[2 * i, j] for i, j in zip(starts, sizes) if j]


def build(split_nets: list[str], split: str, p: FormatParams, heldout: set[str]) -> tuple[list[dict], int]:
    """Rendered examples of one split, and how many were dropped as held-out prompts."""
    layout = p.layout.effective()
    if layout.pack:
        return build_packed(split_nets, split, p, heldout)
    records, dropped = [], 0
    for i, net in enumerate(split_nets):
        for j, (user, assistant) in enumerate(layouts.examples(net, layout.trace, layout.strategy, layout)):
            if layouts.read_prompt(user) in heldout:
                dropped += 1
                continue
            records.append(record(f"{split}-{i:06d}-{j:03d}", user, assistant, p))
    return records, dropped


def build_packed(split_nets: list[str], split: str, p: FormatParams, heldout: set[str]):
    """The states of every net's trace, held-out nets dropped, shuffled (so a line mixes
    nets and lengths) and packed into lines of random widths up to the frame."""
    states = [s for net in split_nets for s in reducer.parallel_trace(net)]
    kept = [s for s in states if s not in heldout]
    rng = random.Random(f"{p.seed}-pack-{split}")
    rng.shuffle(kept)
    examples = layouts.packed(kept, p.layout, rng)
    if not p.layout.spread:
        records = [record(f"{split}-p{k:06d}", user, answer, p) for k, (user, answer) in enumerate(examples)]
        return records, len(states) - len(kept)
    spread_rng = random.Random(f"{p.seed}-spread-{split}")  # its own stream: the lines stay the same
    records = [
        record(f"{split}-p{k:06d}", user, answer, p, spread_jumps(user, p.layout.spread, spread_rng))
        for k, (user, answer) in enumerate(examples)
    ]
    return records, len(states) - len(kept)


def format_records(src: Path, p: FormatParams, section: str) -> Formatted:
    """Read generate's folder, check every net, and render the training and validation examples."""
    meta = read_meta(src, "generate", versions=(1,))
    heldout = {net for split in HELDOUT for net in read_nets(src, split, meta)}
    train_nets, val_nets = read_nets(src, "train", meta), read_nets(src, "val", meta)

    train, dropped_train = build(train_nets, "train", p, heldout)
    val, dropped_val = build(val_nets, "val", p, heldout)
    random.Random(p.seed).shuffle(train)

    counts = {
        "train_nets": len(train_nets),
        "train_examples": len(train),
        "val_nets": len(val_nets),
        "val_examples": len(val),
        "dropped_heldout_prompts": dropped_train + dropped_val,
    }
    task = Task(
        task="nets",
        chat_style=p.chat_style,
        chat_template=styles.template(p.chat_style),
        stop=[],
        system="",
        layout=dataclasses.asdict(p.layout.effective()),
    )
    summary = (
        f"kept {len(train):,} train / {len(val):,} val examples "
        f"({counts['dropped_heldout_prompts']:,} dropped: prompt is a held-out net)"
    )
    return Formatted(train, val, task, counts, styles.BOS, styles.EOS, summary)
