"""Stage pretokenize: build the tokenizer and write flat token files for training.

Reads format's OUT (train.jsonl, val.jsonl, meta.json) and writes OUT/:

    tokenizer/            HF tokenizer files with the chat template inside (sentencepiece
                          also leaves its tokenizer.model there)
    {train,val}.{bin,idx,mask}   see smolforge/tokens.py
    meta.json             backend, vocab size, dtype, token counts, tokenizer hash, and the
                          task fields format recorded (trace shape, strategy, chat style)

The tokenizer backend is `pretokenize.<model>.tokenizer` (smolforge/tokenizer.py): the
base model's own, or one trained on the training split only (sentencepiece, byte_bpe),
or an offline tiktoken encoding. Each segment is tokenized on its own (so loss masks
follow segment edges); `segment_boundary_mismatches` in the metrics counts examples
where that differs from tokenizing the whole text (0 unless a token would straddle an
edge). An example that starts with BOS twice is refused.

Run by hand:
    python -m stages.pretokenize --model nets --in data/format/nets \
        --out data/pretokenize/nets --metrics metrics/pretokenize/nets.json
"""

from __future__ import annotations

import argparse
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smolforge import chat, tokenizer, tokens
from smolforge.cli import StageError, produced_by, run
from smolforge.io import atomic_dir, meta_count, read_jsonl, read_meta, write_json
from smolforge.log import setup
from smolforge.params import load_params

FORMAT_VERSION = tokens.FORMAT_VERSION


# which optional fields each backend needs; the others must be null
_NEEDS = {
    "base": ("base",),
    "sentencepiece": ("vocab_size",),
    "tiktoken": ("encoding",),
    "byte_bpe": ("vocab_size",),
}
# 256 byte tokens + specials (sentencepiece adds <unk>) + at least one more token
_MIN_VOCAB = {"byte_bpe": 260, "sentencepiece": 261}


@dataclass(frozen=True)
class PretokenizeParams:
    tokenizer: Literal["base", "sentencepiece", "tiktoken", "byte_bpe"]
    base: str | None  # base: embedded, a .gguf file, an HF model directory or a hub id
    vocab_size: int | None  # sentencepiece, byte_bpe: upper bound; training stops early when no merge is left
    encoding: str | None  # tiktoken: an encoding that ships offline

    def check(self) -> list[str]:
        needs = _NEEDS[self.tokenizer]
        problems = []
        for name in ("base", "vocab_size", "encoding"):
            value = getattr(self, name)
            if name in needs and value is None:
                problems.append(f"{name}: required for tokenizer {self.tokenizer}")
            elif name not in needs and value is not None:
                users = ", ".join(k for k, v in _NEEDS.items() if name in v)
                problems.append(f"{name}: must be null for tokenizer {self.tokenizer} (used by {users})")
        low = _MIN_VOCAB.get(self.tokenizer, 0)
        if "vocab_size" in needs and self.vocab_size is not None and not low <= self.vocab_size <= 2**20:
            problems.append(f"vocab_size: expected {low}..{2**20} (256 bytes + specials + merges)")
        if (
            "encoding" in needs
            and self.encoding is not None
            and self.encoding not in tokenizer.OFFLINE_ENCODINGS
        ):
            known = ", ".join(tokenizer.OFFLINE_ENCODINGS)
            problems.append(f"encoding: {self.encoding!r} does not ship offline (known: {known})")
        return problems


def read_segments(path: Path, expected: int | None) -> list[list[tuple[str, bool]]]:
    """Each example's rendered segments; a malformed one names its line."""
    out = []
    for lineno, rec in enumerate(read_jsonl(path, "format", required=("segments",), expected=expected), 1):
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


def batch_ids(hf_tok, texts: list[str]) -> list[list[int]]:
    """The ids `hf_tok(texts, add_special_tokens=False)` gives, each distinct text encoded
    once, by the Rust tokenizer itself where there is one.

    Segments repeat a lot (BOS, chat headers, nets states shared by many examples), and
    a batch encode costs per string: on the default nets data this is 2-3x faster than
    the HF call (README: Performance). Equal texts share one ids list: do not mutate.
    """
    unique = list(dict.fromkeys(texts))
    rust = getattr(hf_tok, "backend_tokenizer", None)
    if rust is not None and hasattr(rust, "encode_batch_fast"):
        rust.encode_special_tokens = bool(getattr(hf_tok, "split_special_tokens", False))  # as hf_tok sets it
        ids = [e.ids for e in rust.encode_batch_fast(unique, add_special_tokens=False)]
    else:
        ids = hf_tok(unique, add_special_tokens=False)["input_ids"]
    by_text = dict(zip(unique, ids))
    return [by_text[t] for t in texts]


def encode(hf_tok, examples: list[list[tuple[str, bool]]]) -> list[tuple[list[int], list[int]]]:
    """Tokenize every segment in one batch call, then stitch examples and masks."""
    ids = batch_ids(hf_tok, [t for ex in examples for t, _ in ex])
    out, k = [], 0
    for ex in examples:
        toks, mask = [], []
        for _, loss in ex:
            toks.extend(ids[k])
            mask.extend([int(loss)] * len(ids[k]))
            k += 1
        out.append((toks, mask))
    return out


def check_double_bos(encoded: dict[str, list], paths: dict[str, Path], hf_tok) -> None:
    """Refuse examples whose ids start with BOS twice (a template that adds BOS to text
    that already has one); the message names the first one's file and line."""
    bos = hf_tok.bos_token_id
    if bos is None:
        return
    bad = [
        (name, i) for name, exs in encoded.items() for i, (ids, _) in enumerate(exs) if ids[:2] == [bos, bos]
    ]
    if bad:
        name, i = bad[0]
        raise StageError(
            f"{paths[name]}:{i + 1}: example starts with BOS {hf_tok.bos_token!r} twice "
            f"({len(bad)} example(s) do) {produced_by('format')}"
        )


def boundary_mismatches(hf_tok, examples, encoded, path: Path, log) -> int:
    """Examples whose segment-wise ids differ from the ids of their whole text."""
    whole = batch_ids(hf_tok, ["".join(t for t, _ in ex) for ex in examples])
    bad = [i for i, (ids, (seg_ids, _)) in enumerate(zip(whole, encoded)) if ids != seg_ids]
    if bad:
        log.warning(
            "%s: %d example(s) tokenize differently segment by segment than as a whole (first: line %d); "
            "a token straddles a segment edge there",
            path,
            len(bad),
            bad[0] + 1,
        )
    return len(bad)


def encode_and_check(hf_tok, splits: dict[str, list], paths: dict[str, Path], log) -> tuple[dict, int]:
    """Each split's (ids, mask) per example, after the double-BOS check, and the count of
    segment-boundary mismatches over all splits.

    Python's cyclic GC is paused meanwhile: the hundreds of thousands of small lists built
    here hold no cycles, and with the collector running, stitching them took 3-4x longer
    on the default nets data (README: Performance).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        encoded = {name: encode(hf_tok, exs) for name, exs in splits.items()}
        check_double_bos(encoded, paths, hf_tok)
        mismatches = sum(boundary_mismatches(hf_tok, splits[n], encoded[n], paths[n], log) for n in splits)
    finally:
        if was_enabled:
            gc.enable()
    return encoded, mismatches


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
    paths = {name: args.src / f"{name}.jsonl" for name in ("train", "val")}
    splits = {
        name: read_segments(path, meta_count(fmeta, f"{name}_examples")) for name, path in paths.items()
    }

    # ---- tokenizer: trained ones learn from the training split only
    train_texts = ["".join(t for t, _ in ex) for ex in splits["train"]]
    # format records the BOS/EOS strings it rendered (chat); nets renders smolforge.chat's
    specials = tokenizer.Specials(fmeta.get("bos") or chat.BOS, fmeta.get("eos") or chat.EOS, chat.PAD)
    built = tokenizer.build(
        p.tokenizer,
        train_texts,
        fmeta.get("chat_template"),
        specials,
        base=p.base,
        vocab_size=p.vocab_size,
        encoding=p.encoding,
    )
    hf_tok = built.hf
    vocab_size = tokenizer.n_vocab(hf_tok)
    dtype = tokens.token_dtype(vocab_size)

    # ---- encode and check the ids before writing anything
    encoded, mismatches = encode_and_check(hf_tok, splits, paths, log)

    # ---- write
    with atomic_dir(args.out) as tmp:
        tokenizer.save(built, tmp / "tokenizer")
        counts = {name: tokens.write_split(tmp, name, encoded[name], dtype) for name in splits}
        meta = {
            "format_version": FORMAT_VERSION,
            "produced_by": "pretokenize",
            "tokenizer": p.tokenizer,
            **{k: v for k, v in (("base", p.base), ("encoding", p.encoding)) if v is not None},
            "tokenizer_sha256": tokenizer.file_hash(tmp / "tokenizer"),
            "vocab_size": vocab_size,
            "dtype": dtype.name,
            "bos_id": hf_tok.bos_token_id,
            "eos_id": hf_tok.eos_token_id,
            "pad_id": hf_tok.pad_token_id,
            "counts": counts,
            "task": {
                k: fmeta[k]
                for k in (
                    "task",
                    "trace",
                    "strategy",
                    "blanks",
                    "frame",
                    "marks",
                    "pack",
                    "border",
                    "chat_style",
                    "stop",
                    "system",
                )
                if k in fmeta
            },
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
