"""Stage pretokenize: build the tokenizer and write flat token files for training.

Reads format's OUT (train.jsonl, val.jsonl, meta.json) and writes OUT/:

    tokenizer/            HF tokenizer files with the chat template inside (sentencepiece
                          also leaves its tokenizer.model there)
    {train,val}.{bin,idx,mask,bytes}   see smolforge/core/tokens.py
    {train,val}.pos       position ids, only for a split whose examples have position jumps
    meta.json             backend, vocab size, dtype, token counts, tokenizer hash, each
                          validation example's source (val_sources), and format's task
                          record, passed on unchanged (smolforge/core/card.py)

The tokenizer backend is `pretokenize.<model>.tokenizer` (smolforge/core/tokenizer.py):
the base model's own, one trained on the training split only (sentencepiece, byte_bpe),
or an offline tiktoken encoding. Segments are tokenized one by one so loss masks follow
their edges (smolforge/core/encode.py); `segment_boundary_mismatches` in the metrics
counts examples where that differs from tokenizing the whole text.

Run by hand:
    python -m stages.pretokenize --model nets --in data/format/nets \
        --out data/pretokenize/nets --metrics metrics/pretokenize/nets.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from smolforge.core import encode, tokenizer, tokens
from smolforge.core.card import parse_task
from smolforge.core.cli import run
from smolforge.core.io import atomic_dir, meta_count, read_meta, write_json
from smolforge.core.log import setup
from smolforge.core.params import load_params
from smolforge.core.styles import PAD

FORMAT_VERSION = tokens.FORMAT_VERSION


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="which params subsection: pretokenize.<model>")
    ap.add_argument("--in", dest="src", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("pretokenize")
    p = load_params(f"pretokenize.{args.model}", tokenizer.PretokenizeParams, args.params)

    # ---- load and check
    fmeta = read_meta(args.src, "format", versions=(2,))
    task = parse_task(fmeta.get("task"), f"{args.src}/meta.json", "format")
    paths = {name: args.src / f"{name}.jsonl" for name in ("train", "val")}
    splits = {
        name: encode.read_segments(path, meta_count(fmeta, f"{name}_examples"))
        for name, path in paths.items()
    }

    # ---- tokenizer: trained ones learn from the training split only
    train_texts = ["".join(t for t, _ in ex) for ex in splits["train"]]
    built = tokenizer.build(
        p.tokenizer,
        train_texts,
        task.chat_template,
        tokenizer.Specials(fmeta["bos"], fmeta["eos"], PAD),
        base=p.base,
        vocab_size=p.vocab_size,
        encoding=p.encoding,
    )
    hf_tok = built.hf
    vocab_size = tokenizer.n_vocab(hf_tok)
    dtype = tokens.token_dtype(vocab_size)

    # ---- encode and check the ids before writing anything
    encoded, mismatches = encode.encode_and_check(hf_tok, splits, paths, log)
    # position ids are stored only where format asked for jumps (smolforge/core/positions.py)
    jumps = {name: encode.read_jumps(path, meta_count(fmeta, f"{name}_examples")) for name, path in paths.items()}
    positions = {name: encode.positions(hf_tok, splits[name], jumps[name]) for name in splits if any(jumps[name])}

    # ---- write
    with atomic_dir(args.out) as tmp:
        tokenizer.save(built, tmp / "tokenizer")
        counts = {
            name: tokens.write_split(
                tmp, name, encoded[name], dtype, encode.target_bytes(splits[name]), positions.get(name)
            )
            for name in splits
        }
        meta = {
            "format_version": FORMAT_VERSION,
            "produced_by": "pretokenize",
            "tokenizer": p.tokenizer,
            # what this backend read: a base, an encoding (fields it ignores are not recorded)
            **{k: v for k, v in p.used().items() if k in ("base", "encoding")},
            "tokenizer_sha256": tokenizer.file_hash(tmp / "tokenizer"),
            "vocab_size": vocab_size,
            "dtype": dtype.name,
            "bos_id": hf_tok.bos_token_id,
            "eos_id": hf_tok.eos_token_id,
            "pad_id": hf_tok.pad_token_id,
            "counts": counts,
            # each validation example's source, for per-source losses and bits per byte
            "val_sources": encode.read_sources(paths["val"], meta_count(fmeta, "val_examples")),
            "task": task.to_dict(),
        }
        write_json(tmp / "meta.json", meta)
    write_json(
        args.metrics, {"vocab_size": vocab_size, "counts": counts, "segment_boundary_mismatches": mismatches}
    )
    log.info(
        "%s tokenizer, vocab %d; train %s tokens in %s examples, val %s tokens; %d segment-boundary mismatches",
        p.tokenizer,
        vocab_size,
        f"{counts['train']['n_tokens']:,}",
        f"{counts['train']['n_examples']:,}",
        f"{counts['val']['n_tokens']:,}",
        mismatches,
    )


if __name__ == "__main__":
    raise SystemExit(run(main))
