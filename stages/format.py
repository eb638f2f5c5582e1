"""Stage format: turn a model's source records into chat records and rendered text.

For the `nets` model it reads generate's splits and writes OUT/train.jsonl and
OUT/val.jsonl, one example per line:

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
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smolforge import chat, nets, netsformat
from smolforge.cli import StageError, run
from smolforge.io import atomic_dir, read_jsonl, read_meta, write_json, write_jsonl
from smolforge.log import setup
from smolforge.params import load_params

FORMAT_VERSION = 1
HELDOUT = ("test", "ood", "stratified12")


@dataclass(frozen=True)
class NetsFormatParams:
    trace: netsformat.TraceShape
    strategy: nets.Strategy
    chat_style: chat.ChatStyle
    loss_on: Literal["assistant", "all"]
    seed: int  # shuffles the order of training examples


def read_nets(folder: Path, split: str) -> list[str]:
    """Compact nets of one generate split; a malformed net names its line."""
    path = folder / f"{split}.jsonl"
    out = []
    for lineno, rec in enumerate(read_jsonl(path, "generate", required=("net",)), 1):
        net = nets.parse(str(rec["net"]))
        if net is None:
            raise StageError(
                f'{path}:{lineno}: field "net": {rec["net"]!r} is not a net of '
                f"space-separated A B C D (written by stage generate; run: dvc repro generate)"
            )
        out.append(net)
    return out


def build(split_nets: list[str], split: str, p: NetsFormatParams, heldout: set[str]):
    """Rendered examples of one split, and how many were dropped as held-out prompts."""
    records, dropped = [], 0
    for i, net in enumerate(split_nets):
        for j, (user, assistant) in enumerate(netsformat.examples(net, p.trace, p.strategy)):
            if nets.parse(user) in heldout:
                dropped += 1
                continue
            msgs = netsformat.messages(user, assistant)
            segments = chat.render(msgs, p.chat_style, p.loss_on)
            records.append(
                {
                    "id": f"{split}-{i:06d}-{j:03d}",
                    "source": "generate",
                    "messages": msgs,
                    "segments": [[text, loss] for text, loss in segments],
                }
            )
    return records, dropped


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="which params subsection: format.<model>")
    ap.add_argument("--in", dest="src", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("format")
    if args.model != "nets":
        raise StageError(f"format: no formatter for model {args.model!r} (known: nets)")
    p = load_params(f"format.{args.model}", NetsFormatParams, args.params)

    # ---- load and check every input before writing anything
    read_meta(args.src, "generate", versions=(1,))
    heldout = {net for split in HELDOUT for net in read_nets(args.src, split)}
    train_nets, val_nets = read_nets(args.src, "train"), read_nets(args.src, "val")

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


if __name__ == "__main__":
    raise SystemExit(run(main))
