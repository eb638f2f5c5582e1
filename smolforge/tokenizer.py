"""Tokenizers: building them from a corpus, saving them as HF files, loading them back.

`byte_bpe` is a byte-level BPE (GPT-2 style pre-tokenizer, so llama.cpp's `gpt2`
tokenizer reproduces it) trained on the corpus with a small vocabulary. For nets it
learns one token per symbol and its leading space (` A`, ` =`, `EMPTY`), so a net of
length n costs about n tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from smolforge.chat import BOS, EOS, PAD

SPECIAL_TOKENS = [BOS, EOS, PAD]


def train_byte_bpe(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE on `texts`; returns a `tokenizers.Tokenizer`.

    The 256 byte symbols always come first (ids 0-255), then learned merges, then the
    special tokens, so the vocabulary covers any input.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    # special tokens are whole tokens, never material for merges
    tok.train_from_iterator((_strip_special(t) for t in texts), trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def _strip_special(text: str) -> str:
    for token in SPECIAL_TOKENS:
        text = text.replace(token, "")
    return text


def to_hf(tok, chat_template: str):
    """Wrap a `tokenizers.Tokenizer` as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
    )


def load(folder: Path | str):
    """Load an HF tokenizer folder (tokenizer.json + tokenizer_config.json)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def file_hash(folder: Path | str) -> str:
    """sha256 of tokenizer.json: identifies the exact vocabulary and merges."""
    return hashlib.sha256((Path(folder) / "tokenizer.json").read_bytes()).hexdigest()


def byte_bpe_parts(hf_tokenizer) -> dict:
    """Tokens, merges and special ids of a byte-level BPE, for GGUF export."""
    spec = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"expected a BPE tokenizer, got {model.get('type')}")
    vocab = dict(model["vocab"])
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    tokens = [None] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    special = {a["content"] for a in spec.get("added_tokens", []) if a.get("special")}
    return {"tokens": tokens, "merges": merges, "special": special}
