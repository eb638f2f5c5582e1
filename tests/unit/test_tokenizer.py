"""smolforge.core.tokenizer: byte-level BPE on net text, byte fallback, determinism, HF save/load, GGUF parts,
the specials format renders, unused ids, the base backend (other backends: test_tokenizer_backends.py)."""

from __future__ import annotations

import random

import pytest

from smolforge.core import styles, tokenizer
from smolforge.nets import layouts, reducer

VOCAB = 272  # as params.yaml: an upper bound, 256 bytes + 3 specials + up to 13 merges
N_MERGES = 9  # what net text has to offer: " A" " B" " C" " D" " =" and four for "EMPTY"


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Formatted training text of the nets task, step shape, as format renders it."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        net = reducer.sample_net(rng, rng.randint(1, 10))
        for user, assistant in layouts.examples(net, "step", "priority"):
            segs = styles.render(layouts.messages(user, assistant), "plain")
            texts.append("".join(text for text, _ in segs))
    return texts


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus()


@pytest.fixture(scope="module")
def tok(texts):
    return tokenizer.train_byte_bpe(texts, VOCAB)


def test_vocab_layout(tok):
    n = tok.get_vocab_size()
    assert n == 256 + N_MERGES + 3
    from tokenizers.pre_tokenizers import ByteLevel

    # the 256 byte symbols come first, so any input has tokens
    assert {tok.id_to_token(i) for i in range(256)} == set(ByteLevel.alphabet())
    ids = [tok.token_to_id(s) for s in tokenizer.SPECIAL_TOKENS]
    assert ids == [n - 3, n - 2, n - 1]  # specials last, after bytes and merges


def test_vocab_size_is_an_upper_bound(texts):
    small = tokenizer.train_byte_bpe(texts, 256 + 3 + 2)
    assert small.get_vocab_size() == 261


@pytest.mark.parametrize("piece", [" A", " B", " C", " D", " =", "EMPTY", "A", "D"])
def test_net_symbols_are_single_tokens(tok, piece):
    assert len(tok.encode(piece).ids) == 1


def test_net_of_length_n_costs_n_tokens(tok):
    assert len(tok.encode("A D B C =").ids) == 5
    assert len(tok.encode("B A\nEMPTY").ids) == 4  # B, " A", newline, EMPTY


@pytest.mark.parametrize("special", tokenizer.SPECIAL_TOKENS)
def test_specials_are_single_ids(tok, special):
    enc = tok.encode(f"A{special}B")
    assert enc.ids[1] == tok.token_to_id(special) and len(enc.ids) == 3


@pytest.mark.parametrize(
    "text",
    [
        "caf\u00e9 \u00fcber na\u00efve",
        "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
        "emoji \U0001f600\U0001f9ea and ZWJ \U0001f468\u200d\U0001f469\u200d\U0001f467",
        "tabs\tand  spaces \r\n\x00 nul",
        "\u0645\u0631\u062d\u0628\u0627 \U00010348 \ufffd",
    ],
)
def test_any_text_round_trips(tok, text):
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.get_vocab_size() for i in ids)


def test_training_is_deterministic(texts, tok):
    again = tokenizer.train_byte_bpe(list(texts), VOCAB)
    assert again.to_str() == tok.to_str()


def test_specials_in_corpus_are_not_merge_material(tok):
    # "<s>" / "</s>" appear in every training text; no merge may build them from bytes
    assert tok.token_to_id("s>") is None and tok.token_to_id("</") is None


def test_byte_bpe_parts_are_consistent(tok):
    hf = tokenizer.to_hf(tok, styles.template("plain"))
    parts = tokenizer.byte_bpe_parts(hf)
    tokens, merges = parts["tokens"], parts["merges"]
    n = tok.get_vocab_size()
    assert len(tokens) == n and None not in tokens
    assert tokens == hf.convert_ids_to_tokens(list(range(n)))
    assert parts["special"] == set(tokenizer.SPECIAL_TOKENS)
    assert len(merges) == N_MERGES
    vocab = set(tokens)
    for m in merges:
        left, right = m.split(" ")
        assert left in vocab and right in vocab and left + right in vocab
    assert "\u0120 A" in merges  # byte-level spelling of " A": "\u0120" is the space byte


def test_byte_bpe_parts_refuses_other_models():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    wordlevel = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, "[UNK]"))
    )
    with pytest.raises(ValueError, match="expected a BPE tokenizer, got WordLevel"):
        tokenizer.byte_bpe_parts(wordlevel)


def test_hf_save_and_load_round_trip(tmp_path, tok):
    hf = tokenizer.to_hf(tok, styles.template("plain"))
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = tokenizer.load(tmp_path)
    assert loaded.chat_template == styles.template("plain")
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (styles.BOS, styles.EOS, styles.PAD)
    assert loaded.pad_token_id == tok.token_to_id(styles.PAD)
    text = "<s>A D B\nD A B =</s> caf\u00e9"
    assert loaded.encode(text, add_special_tokens=False) == tok.encode(text).ids
    assert loaded.decode(loaded.encode(text, add_special_tokens=False)) == text
    messages = layouts.messages("A D B", "D A B =")
    assert loaded.apply_chat_template(messages, tokenize=False) == "".join(
        t for t, _ in styles.render(messages, "plain")
    )


def test_file_hash_identifies_the_vocab(tmp_path, texts, tok):
    def save(folder, t):
        tokenizer.to_hf(t, styles.template("plain")).save_pretrained(folder)
        return tokenizer.file_hash(folder)

    h1 = save(tmp_path / "a", tok)
    assert len(h1) == 64
    assert save(tmp_path / "b", tokenizer.train_byte_bpe(texts, VOCAB)) == h1
    assert save(tmp_path / "c", tokenizer.train_byte_bpe(texts, VOCAB - 6)) != h1


def test_byte_bpe_takes_the_specials_format_rendered(texts):
    specials = ["<|im_start|>", "<|im_end|>", "<pad>"]
    chatml = [t.replace("<s>", specials[0]).replace("</s>", specials[1]) for t in texts]
    tok = tokenizer.train_byte_bpe(chatml, VOCAB, specials)
    n = tok.get_vocab_size()
    assert [tok.token_to_id(s) for s in specials] == [n - 3, n - 2, n - 1]
    assert n == 256 + N_MERGES + 3  # the same merges: specials are not merge material


def test_n_vocab_counts_unused_ids():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    # ids 0, 1 and 5: a tokenizer with holes (as cl100k has) needs 6 embedding rows
    raw = Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 5}, [("a", "b")]))
    hf = PreTrainedTokenizerFast(tokenizer_object=raw)
    assert len(hf) == 3 and tokenizer.n_vocab(hf) == 6
    assert tokenizer.byte_bpe_parts(hf)["tokens"] == ["a", "b", None, None, None, "ab"]


def test_base_backend_sets_the_template_and_a_pad(monkeypatch, tok):
    """A base without a pad token gets EOS as pad; format's template replaces its own."""
    from smolforge.core import pretrained

    def load_tokenizer(base):
        assert base == "some/base"
        return tokenizer.to_hf(tok, "{{ 'own' }}", tokenizer.Specials(pad=None))

    monkeypatch.setattr(pretrained, "load_tokenizer", load_tokenizer)
    built = tokenizer.build("base", [], styles.template("plain"), tokenizer.Specials(), base="some/base")
    assert built.hf.pad_token == styles.EOS and built.hf.chat_template == styles.template("plain")
    assert built.files == {}
    kept = tokenizer.build("base", [], None, tokenizer.Specials(), base="some/base").hf
    assert kept.chat_template == "{{ 'own' }}"
