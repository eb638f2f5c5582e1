"""Stage pretokenize: build the tokenizer and write flat token files for training.

Reads format's OUT (train.jsonl, val.jsonl, meta.json) and writes OUT/:

    tokenizer/            HF tokenizer files with the chat template inside
    {train,val}.{bin,idx,mask}   see smolforge/tokens.py
    meta.json             vocab size, dtype, token counts, tokenizer hash, and the task
                          fields format recorded (trace shape, strategy, chat style)

Run by hand:
    python -m stages.pretokenize --model nets --in data/format/nets \
        --out data/pretokenize/nets --metrics metrics/pretokenize/nets.json
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smolforge import tokenizer, tokens
from smolforge.cli import StageError, run
from smolforge.io import atomic_dir, read_jsonl, read_meta, write_json
from smolforge.log import setup
from smolforge.params import load_params

FORMAT_VERSION = tokens.FORMAT_VERSION


@dataclass(frozen=True)
class PretokenizeParams:
    tokenizer: Literal["byte_bpe"]
    vocab_size: int  # upper bound; training stops early when no merge is left

    def check(self) -> list[str]:
        if not 260 <= self.vocab_size <= 2**20:
            return [f"vocab_size: expected 260..{2**20} (256 bytes + specials + merges)"]
        return []


def read_segments(path: Path) -> list[list[tuple[str, bool]]]:
    """Each example's rendered segments; a malformed one names its line."""
    out = []
    for lineno, rec in enumerate(read_jsonl(path, "format", required=("segments",)), 1):
        segs = rec["segments"]
        if not isinstance(segs, list) or not all(
            isinstance(s, list) and len(s) == 2 and isinstance(s[0], str) and isinstance(s[1], bool)
            for s in segs
        ):
            raise StageError(
                f'{path}:{lineno}: field "segments": expected [[text, loss], ...] '
                "(written by stage format; run: dvc repro format)"
            )
        out.append([(t, m) for t, m in segs])
    return out


def encode(hf_tok, examples: list[list[tuple[str, bool]]]) -> list[tuple[list[int], list[int]]]:
    """Tokenize every segment in one batch call, then stitch examples and masks."""
    texts = [t for ex in examples for t, _ in ex]
    ids = hf_tok(texts, add_special_tokens=False)["input_ids"]
    out, k = [], 0
    for ex in examples:
        toks, mask = [], []
        for _, loss in ex:
            toks.extend(ids[k])
            mask.extend([int(loss)] * len(ids[k]))
            k += 1
        out.append((toks, mask))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="which params subsection: pretokenize.<model>")
    ap.add_argument("--in", dest="src", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("pretokenize")
    p = load_params(f"pretokenize.{args.model}", PretokenizeParams, args.params)

    # ---- load and check
    fmeta = read_meta(args.src, "format", versions=(1,))
    splits = {name: read_segments(args.src / f"{name}.jsonl") for name in ("train", "val")}

    # ---- tokenizer: trained on the training split only
    train_texts = ("".join(t for t, _ in ex) for ex in splits["train"])
    hf_tok = tokenizer.to_hf(tokenizer.train_byte_bpe(train_texts, p.vocab_size), fmeta["chat_template"])
    vocab_size = len(hf_tok)
    dtype = tokens.token_dtype(vocab_size)

    # ---- encode and write
    with atomic_dir(args.out) as tmp:
        hf_tok.save_pretrained(tmp / "tokenizer")
        counts = {
            name: tokens.write_split(tmp, name, encode(hf_tok, exs), dtype) for name, exs in splits.items()
        }
        meta = {
            "format_version": FORMAT_VERSION,
            "produced_by": "pretokenize",
            "tokenizer": p.tokenizer,
            "tokenizer_sha256": tokenizer.file_hash(tmp / "tokenizer"),
            "vocab_size": vocab_size,
            "dtype": dtype.name,
            "bos_id": hf_tok.bos_token_id,
            "eos_id": hf_tok.eos_token_id,
            "pad_id": hf_tok.pad_token_id,
            "counts": counts,
            "task": {k: fmeta[k] for k in ("task", "trace", "strategy", "chat_style") if k in fmeta},
        }
        write_json(tmp / "meta.json", meta)
    write_json(args.metrics, {"vocab_size": vocab_size, "counts": counts})
    log.info(
        "vocab %d; train %s tokens in %s examples, val %s tokens",
        vocab_size,
        f"{counts['train']['n_tokens']:,}",
        f"{counts['train']['n_examples']:,}",
        f"{counts['val']['n_tokens']:,}",
    )


if __name__ == "__main__":
    raise SystemExit(run(main))
