"""Encoding rendered examples into token ids and loss masks, with the checks pretokenize makes.

Each segment is tokenized on its own (so loss masks follow segment edges);
`boundary_mismatches` counts examples where that differs from tokenizing the whole text
(0 unless a token would straddle an edge). An example that starts with BOS twice is
refused.
"""

from __future__ import annotations

import gc
from pathlib import Path

from smolforge.core.cli import StageError, produced_by
from smolforge.core.io import read_jsonl


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


def target_bytes(examples: list[list[tuple[str, bool]]]) -> list[int]:
    """UTF-8 bytes of each example's target text (its segments with loss on): the
    bits-per-byte denominator, counted from the text, whatever the tokenizer."""
    return [sum(len(t.encode("utf-8")) for t, loss in ex if loss) for ex in examples]


def read_sources(path: Path, expected: int | None) -> list[str]:
    """Each record's `source` (essays, conversations, qa, ...), in order."""
    return [str(rec.get("source", "")) for rec in read_jsonl(path, "format", expected=expected)]


def read_jumps(path: Path, expected: int | None) -> list[list | None]:
    """Each record's `position_jumps` ([[segment, jump], ...], smolforge/core/positions.py)
    or None; a malformed one names its line."""
    out = []
    for lineno, rec in enumerate(read_jsonl(path, "format", expected=expected), 1):
        jumps = rec.get("position_jumps")
        ok = jumps is None or (
            isinstance(jumps, list)
            and all(isinstance(j, list) and len(j) == 2 and all(isinstance(v, int) and v >= 0 for v in j) for j in jumps)
        )
        if not ok:
            raise StageError(
                f'{path}:{lineno}: field "position_jumps": expected [[segment, jump >= 0], ...] {produced_by("format")}'
            )
        out.append(jumps)
    return out


def positions(hf_tok, examples: list[list[tuple[str, bool]]], jumps: list[list | None]) -> list[list[int]]:
    """Each example's position ids with its jumps (segments tokenized as `encode` does)."""
    from smolforge.core.positions import with_jumps

    lengths = iter(len(ids) for ids in batch_ids(hf_tok, [t for ex in examples for t, _ in ex]))
    return [with_jumps([next(lengths) for _ in ex], j) for ex, j in zip(examples, jumps)]


def batch_ids(hf_tok, texts: list[str]) -> list[list[int]]:
    """The ids `hf_tok(texts, add_special_tokens=False)` gives, each distinct text encoded
    once, by the Rust tokenizer itself where there is one.

    Segments repeat a lot (BOS, chat headers, nets states shared by many examples), and
    a batch encode costs per string: on the default nets data this is 2-3x faster than
    the HF call (docs/performance.md). Equal texts share one ids list: do not mutate.
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
    on the default nets data (docs/performance.md).
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
