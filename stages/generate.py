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
from dataclasses import dataclass
from pathlib import Path

from smolforge import nets
from smolforge.cli import StageError, run
from smolforge.io import atomic_dir, write_json, write_jsonl
from smolforge.log import setup
from smolforge.params import load_params

FORMAT_VERSION = 1


@dataclass(frozen=True)
class GenerateParams:
    seed: int
    train_lengths: list[int]  # [min, max], inclusive
    n_train: int
    train_vanishing_share: float  # share of training nets built to reduce to the empty net
    n_val: int
    n_test: int
    max_heldout_share: float  # at most this share of all nets of a length is held out
    ood_lengths: list[int]
    n_ood: int  # per OOD length
    stratified_length: int
    stratified_per_steps: int
    stratified_max_steps: int

    def check(self) -> list[str]:
        errors = []
        lo_hi = self.train_lengths
        if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
            errors.append(f"train_lengths: expected [min, max] with 1 <= min <= max, got {lo_hi}")
        if not 0 <= self.train_vanishing_share <= 1:
            errors.append("train_vanishing_share: expected a share between 0 and 1")
        if not 0 < self.max_heldout_share < 1:
            errors.append("max_heldout_share: expected a share strictly between 0 and 1")
        for name in ("n_train", "n_val", "n_test", "n_ood", "stratified_per_steps"):
            if getattr(self, name) < 0:
                errors.append(f"{name}: expected a count >= 0")
        if any(n < 1 for n in self.ood_lengths):
            errors.append(f"ood_lengths: expected lengths >= 1, got {self.ood_lengths}")
        if self.stratified_max_steps > nets.max_steps(self.stratified_length):
            errors.append(
                f"stratified_max_steps: nets of length {self.stratified_length} take at most "
                f"{nets.max_steps(self.stratified_length)} steps"
            )
        return errors


def make_record(split: str, i: int, net: str) -> dict:
    red = nets.reduce(net)
    return {
        "id": f"{split}-{i:06d}",
        "source": "generate",
        "split": split,
        "net": nets.to_text(net),
        "length": len(net),
        "steps": red.steps,
        "answer": nets.to_text(red.normal_form),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("generate")
    p = load_params("generate", GenerateParams, args.params)

    # ---- sample: held-out sets claim their nets first, training avoids them
    sampler = nets.SplitSampler(p.seed, p.max_heldout_share)
    lengths = range(p.train_lengths[0], p.train_lengths[1] + 1)
    splits: dict[str, list[str]] = {}
    try:
        splits["test"] = sampler.heldout("test", p.n_test, lengths)
        splits["stratified12"] = sampler.by_steps(
            "stratified12", p.stratified_length, p.stratified_per_steps, p.stratified_max_steps
        )
        splits["ood"] = [
            net for n in p.ood_lengths for net in sampler.heldout("ood", p.n_ood, range(n, n + 1))
        ]
        splits["val"] = sampler.heldout("val", p.n_val, lengths)
    except ValueError as e:
        raise StageError(f"params.yaml: generate: {e}") from None
    splits["train"] = sampler.train(p.n_train, lengths, p.train_vanishing_share)

    # ---- write
    counts = {}
    with atomic_dir(args.out) as tmp:
        for split, items in splits.items():
            records = [make_record(split, i, net) for i, net in enumerate(items)]
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
