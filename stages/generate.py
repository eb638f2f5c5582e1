"""Stage generate: sample interaction nets and their exact reductions.

Writes to OUT (data/generate/): train, val and test splits over the training lengths,
`ood.jsonl` (lengths beyond the training range), `stratified12.jsonl` (a fixed length,
nets stratified by step count, in the spirit of the A::B challenge) and `meta.json`.
No net appears in two files. Each record:

    {"id", "source": "generate", "split", "net": "A D B", "length", "steps", "answer": "D"}

Run by hand: python -m stages.generate --out data/generate --metrics metrics/generate.json
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from smolforge.core.cli import run
from smolforge.core.io import atomic_dir, write_json, write_jsonl
from smolforge.core.log import setup
from smolforge.core.params import load_params
from smolforge.nets import generate

FORMAT_VERSION = 1


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("generate")
    p = load_params("generate", generate.GenerateParams, args.params)

    # ---- sample
    splits = generate.sample_splits(p)

    # ---- write
    counts = {}
    with atomic_dir(args.out) as tmp:
        for split, items in splits.items():
            records = [generate.make_record(split, i, net) for i, net in enumerate(items)]
            counts[split] = write_jsonl(tmp / f"{split}.jsonl", records)
            if split == "train":
                by_len = Counter(r["length"] for r in records)
        write_json(
            tmp / "meta.json",
            {
                "format_version": FORMAT_VERSION,
                "produced_by": "generate",
                "counts": counts,
                "train_lengths": p.train_lengths,
                "ood_lengths": p.ood_lengths,
                "stratified_length": p.stratified_length,
                "train_length_histogram": {str(k): by_len[k] for k in sorted(by_len)},
            },
        )
    write_json(args.metrics, {"counts": counts})
    log.info("wrote %s", ", ".join(f"{k} {v:,}" for k, v in counts.items()))


if __name__ == "__main__":
    raise SystemExit(run(main))
