"""smolforge.chat.corpus: chunking by tokens at paragraphs, dedupe, split, weights, lint."""

from __future__ import annotations

import pytest

from smolforge.chat import corpus
from smolforge.core import styles


def words(text: str) -> int:
    return len(text.split())  # a stand-in tokenizer: one token a word


PARAS = ["one two three four", "five six seven", "eight nine ten eleven twelve", "thirteen"]


def test_chunks_fit_the_budget_with_the_title_and_cut_at_paragraphs():
    chunks = corpus.chunk_document("My Title", "\n\n".join(PARAS), 10, words)
    assert all(words("My Title\n\n" + c) <= 10 for c in chunks)
    assert "\n\n".join(chunks).split("\n\n") == PARAS  # every paragraph once, in order, uncut
    assert chunks[0] == "one two three four\n\nfive six seven"


def test_a_paragraph_longer_than_the_budget_is_cut_at_words():
    long = " ".join(f"w{i}" for i in range(25))
    chunks = corpus.chunk_document("T", long, 8, words)
    assert all(words("T\n\n" + c) <= 8 for c in chunks)
    assert " ".join(chunks).split() == long.split()


def example(i: int, text: str, source: str = "qa") -> dict:
    return {"id": f"ex{i}", "source": source, "segments": [[text, True]]}


def test_dedupe_then_split_never_puts_one_text_on_both_sides():
    exs = [example(i, f"text {i % 7}") for i in range(30)] + [example(99, "TEXT   0")]
    unique, dropped = corpus.dedupe(exs)
    assert dropped == 24 and len(unique) == 7
    train, val = corpus.split(unique, 0.3, seed=1)
    norm = {ex["segments"][0][0].lower() for ex in train}
    assert len(val) == 2 and not norm & {ex["segments"][0][0].lower() for ex in val}
    assert corpus.split(unique, 0.3, seed=1) == (train, val)  # seeded


def test_weights_repeat_or_thin_training_examples_deterministically():
    train = [example(i, f"t{i}", "essays") for i in range(100)] + [
        example(200 + i, f"q{i}", "qa") for i in range(10)
    ]
    out = corpus.weigh(train, {"essays": 0.5, "qa": 2.0}, seed=3)
    assert sum(ex["source"] == "qa" for ex in out) == 20
    assert 35 <= sum(ex["source"] == "essays" for ex in out) <= 65
    assert out == corpus.weigh(train, {"essays": 0.5, "qa": 2.0}, seed=3)


@pytest.fixture
def style():
    return corpus.Style("template", "", "<s>", "</s>", "assistant", "")


def test_lint_finds_double_bos_missing_eos_and_untrained_chats(style):
    good_chat = {"id": "c", "source": "qa", "segments": [["<s>user hi\n", False], ["hello</s>", True]]}
    problems = corpus.lint(
        [
            good_chat,
            {"id": "bos", "source": "qa", "segments": [["<s><s>user\n", False], ["x</s>", True]]},
            {"id": "eos", "source": "essays", "text": "T", "segments": [["T\n\nbody", True]]},
            {"id": "none", "source": "qa", "segments": [["<s>user\n", False]]},
            {"id": "open", "source": "qa", "segments": [["<s>u\n", False], ["never ends", True]]},
        ],
        style,
    )
    assert [p.split(":")[0] for p in problems] == ["bos", "eos", "none", "open"]


def test_stop_words_count_as_a_turn_end_for_styles_without_eos_text():
    cb = corpus.Style("chat_builder", styles.style_template("chat_builder"), "", "", "assistant", "")
    ex = corpus.chat_examples(
        [{"id": "q", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}],
        "qa",
        cb,
    )
    assert corpus.lint(ex, cb) == []
    # human_bot ends a turn with EOS: a tokenizer without one leaves its turns open
    hb = corpus.Style("human_bot", styles.style_template("human_bot"), "", "", "assistant", "")
    ex = corpus.chat_examples(ex, "qa", hb)
    assert [p.split(":")[0] for p in corpus.lint(ex, hb)] == ["q"]


def test_persona_becomes_a_system_turn_and_term_reaches_chat_builder():
    cb = corpus.Style("chat_builder", styles.style_template("chat_builder"), "", "", "assistant", "Be kind.")
    rec = {
        "id": "c",
        "about": "leaf",
        "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    }
    (ex,) = corpus.chat_examples([rec], "conversations", cb)
    assert ex["messages"][0] == {"role": "system", "content": "Be kind."}
    assert "".join(t for t, _ in ex["segments"]) == "~ leaf\nBe kind.\n= a\n# b\n"
