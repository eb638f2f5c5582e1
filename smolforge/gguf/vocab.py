"""Tokenizer metadata for GGUF files: any smolforge tokenizer, written the way llama.cpp
reads it back to the same ids as the HF tokenizer.

Two llama.cpp tokenizer models cover the backends:

    gpt2   byte-level BPE: tokens spelled in GPT-2's byte alphabet plus merges, and a
           `tokenizer.ggml.pre` naming the split regex (byte_bpe, the SmolLM2 base: "gpt-2"
           or "smollm"; tiktoken cl100k: "llama-bpe", whose regex is cl100k's)
    llama  sentencepiece BPE: pieces with scores (llama.cpp merges the pair whose result
           scores highest), `<0xNN>` byte-fallback pieces typed BYTE, specials CONTROL

The HF tokenizer's JSON (`backend_tokenizer.to_str()`) says which one applies; a
tokenizer llama.cpp would read differently is refused rather than written.
"""

from __future__ import annotations

import json
import re

import gguf

from smolforge.core.tokenizer import CL100K_PATTERN, byte_bpe_parts
from smolforge.core.tokenizer import n_vocab as vocab_rows

T = gguf.TokenType
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


class VocabError(ValueError):
    """The tokenizer has a shape llama.cpp would tokenize differently."""


def add_vocab(w: gguf.GGUFWriter, hf_tokenizer, n_vocab: int | None = None, pre: str | None = None) -> None:
    """Write the `tokenizer.*` keys of `hf_tokenizer` into `w`.

    Args:
        n_vocab: rows of the model's embedding (default: the tokenizer's highest id + 1);
            ids without a token get placeholder tokens typed UNUSED.
        pre: `tokenizer.ggml.pre` for a byte-level BPE (default: found from the
            pre-tokenizer; tests pass a wrong one on purpose).
    """
    spec = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    n_vocab = n_vocab or vocab_rows(hf_tokenizer)
    if spec["model"].get("type") == "BPE" and spec["model"].get("byte_fallback"):
        _add_llama(w, hf_tokenizer, spec, n_vocab)
    else:
        _add_gpt2(w, hf_tokenizer, n_vocab, pre or pre_tokenizer_name(hf_tokenizer))
    tok = hf_tokenizer
    for token_id, add in (
        (tok.bos_token_id, w.add_bos_token_id),
        (tok.eos_token_id, w.add_eos_token_id),
        (tok.pad_token_id, w.add_pad_token_id),
        (tok.unk_token_id, w.add_unk_token_id),
    ):
        if token_id is not None:
            add(token_id)
    add_bos, add_eos = _adds_specials(tok)
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(add_eos)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)


def _adds_specials(tok) -> tuple[bool, bool]:
    """Whether the HF tokenizer itself adds BOS / EOS (llama.cpp must do the same)."""
    bare = tok("a", add_special_tokens=False).input_ids
    full = tok("a").input_ids
    added = len(full) > len(bare)
    return added and full[0] == tok.bos_token_id, added and full[-1] == tok.eos_token_id


def _token_list(tokens: list[str | None], n_vocab: int) -> tuple[list[str], list[bool]]:
    """Tokens 0..n_vocab-1 with placeholders at unused ids, and which ids are placeholders."""
    if len(tokens) > n_vocab:
        raise VocabError(f"tokenizer has ids up to {len(tokens) - 1}, beyond the model's {n_vocab} rows")
    tokens = tokens + [None] * (n_vocab - len(tokens))
    unused = [t is None for t in tokens]
    return [f"[PAD{i}]" if t is None else t for i, t in enumerate(tokens)], unused


# ---------------------------------------------------------------- gpt2 (byte-level BPE)


def _add_gpt2(w: gguf.GGUFWriter, tok, n_vocab: int, pre: str) -> None:
    parts = byte_bpe_parts(tok)
    tokens, unused = _token_list(parts["tokens"], n_vocab)
    types = [
        T.UNUSED if u else T.CONTROL if t in parts["special"] else T.NORMAL for t, u in zip(tokens, unused)
    ]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(parts["merges"])


# GPT-2's split regex as HF's ByteLevel(use_regex=True) applies it; llama.cpp runs the
# same regex for these pre names (llama-vocab.cpp: "gpt-2" -> LLAMA_VOCAB_PRE_TYPE_GPT2,
# "smollm" -> the same regex after splitting off single digits, "llama-bpe" -> cl100k's).
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_BYTE_LEVEL_BARE = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
_DIGITS = {"type": "Digits", "individual_digits": True}
_CL100K_SPLIT = {
    "type": "Split",
    "pattern": {"Regex": CL100K_PATTERN},
    "behavior": "Isolated",
    "invert": False,
}


def pre_tokenizer_name(hf_tokenizer) -> str:
    """The `tokenizer.ggml.pre` whose llama.cpp regex equals this tokenizer's pre-tokenizer."""
    spec = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    if spec.get("normalizer") is not None:
        kind = spec["normalizer"].get("type")
        raise VocabError(f"tokenizer has a {kind} normalizer; llama.cpp's gpt2 tokenizer has none")
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]

    def same(step: dict, want: dict) -> bool:
        return all(step.get(k) == v for k, v in want.items())

    if len(steps) == 1 and same(steps[0], _BYTE_LEVEL):
        return "gpt-2"
    if len(steps) == 2 and same(steps[0], _DIGITS) and same(steps[1], _BYTE_LEVEL):
        return "smollm"
    if len(steps) == 2 and same(steps[0], _CL100K_SPLIT) and same(steps[1], _BYTE_LEVEL_BARE):
        return "llama-bpe"
    raise VocabError(f"pre-tokenizer {pre} has no llama.cpp equivalent this exporter knows")


# ---------------------------------------------------------------- llama (sentencepiece BPE)


def _add_llama(w: gguf.GGUFWriter, tok, spec: dict, n_vocab: int) -> None:
    parts = byte_bpe_parts(tok)
    tokens, unused = _token_list(parts["tokens"], n_vocab)
    added = {a["content"]: a for a in spec.get("added_tokens", [])}
    unk = spec["model"].get("unk_token")

    def kind(t: str, u: bool) -> T:
        if u:
            return T.UNUSED
        if t == unk:
            return T.UNKNOWN
        if t in added:
            return T.CONTROL if added[t].get("special") else T.USER_DEFINED
        return T.BYTE if _BYTE_PIECE.fullmatch(t) else T.NORMAL

    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(_scores(tokens, parts["merges"]))
    w.add_token_types([kind(t, u) for t, u in zip(tokens, unused)])
    w.add_add_space_prefix(_space_prefix(spec))


def _scores(tokens: list[str], merges: list[str]) -> list[float]:
    """llama.cpp's SPM tokenizer applies the merge whose result scores highest; HF applies
    the lowest-ranked merge. Score = -rank of the first merge making a token does both."""
    index = {t: i for i, t in enumerate(tokens)}
    scores = [0.0] * len(tokens)  # never a merge result: single characters, bytes, specials
    made: set[int] = set()
    for rank, merge in enumerate(merges):
        i = index[merge.replace(" ", "", 1)]
        if i not in made:
            made.add(i)
            scores[i] = -float(rank)
    return scores


def _space_prefix(spec: dict) -> bool:
    """Whether the tokenizer prepends "▁" to the text (sentencepiece's dummy prefix).

    Refuses shapes other than a Replace(" ", "▁") normalizer (optionally after a Prepend)
    or a non-splitting Metaspace pre-tokenizer, which llama.cpp's SPM model cannot follow.
    """
    norm, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    steps = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm] if norm else []
    kinds = [s.get("type") for s in steps]
    if pre.get("type") == "Metaspace" and not steps and not pre.get("split", True):
        return pre.get("prepend_scheme") in ("first", "always")
    if not pre and kinds in (["Replace"], ["Prepend", "Replace"]):
        replace = steps[-1]
        if replace.get("pattern", {}).get("String") == " " and replace.get("content") == "\u2581":
            return kinds[0] == "Prepend"
    raise VocabError(
        f"sentencepiece-style tokenizer with normalizer {norm or None} and pre-tokenizer {pre or None} "
        "has no llama.cpp equivalent this exporter knows"
    )
