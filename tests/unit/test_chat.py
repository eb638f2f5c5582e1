"""smolforge.chat: rendered segments and loss flags, and the Jinja template agreeing with them."""

from __future__ import annotations

import pytest

from smolforge import chat, tokenizer

CONVO = [
    {"role": "system", "content": "You reduce nets."},
    {"role": "user", "content": "A D B"},
    {"role": "assistant", "content": "D A B =\nD"},
    {"role": "user", "content": "B A"},
    {"role": "assistant", "content": "B A"},
]


@pytest.fixture(scope="module")
def hf_tok():
    texts = ["".join(text for text, _ in chat.render(CONVO, "plain"))] * 5
    return tokenizer.to_hf(tokenizer.train_byte_bpe(texts, 300), chat.template("plain"))


def test_render_assistant_loss():
    assert chat.render(CONVO, "plain") == [
        ("<s>", False),
        ("You reduce nets.\n", False),
        ("A D B\n", False),
        ("D A B =\nD</s>", True),
        ("B A\n", False),
        ("B A</s>", True),
    ]


def test_render_all_loss():
    segs = chat.render(CONVO, "plain", loss_on="all")
    assert [text for text, _ in segs] == [text for text, _ in chat.render(CONVO, "plain")]
    assert [loss for _, loss in segs] == [False, True, True, True, True, True]  # never BOS


def test_prompt_ends_where_the_answer_starts():
    assert chat.prompt(CONVO[:2], "plain") == "<s>You reduce nets.\nA D B\n"
    full = "".join(text for text, _ in chat.render(CONVO[:3], "plain"))
    assert full == chat.prompt(CONVO[:2], "plain") + "D A B =\nD" + chat.EOS


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="unknown chat style 'chatml'"):
        chat.render(CONVO, "chatml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown chat style"):
        chat.template("chatml")  # type: ignore[arg-type]


@pytest.mark.parametrize("n_turns", [2, 3, 5])
def test_template_renders_like_segments(hf_tok, n_turns):
    messages = CONVO[:n_turns]
    text = hf_tok.apply_chat_template(messages, tokenize=False)
    assert text == "".join(t for t, _ in chat.render(messages, "plain"))


@pytest.mark.parametrize("n_turns", [1, 2, 4])
def test_generation_prompt_equals_prompt(hf_tok, n_turns):
    messages = CONVO[:n_turns]
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == chat.prompt(messages, "plain")


def test_template_tokens_equal_segment_tokens(hf_tok):
    ids = hf_tok.apply_chat_template(CONVO, tokenize=True, return_dict=False)
    seg_ids = [
        i for text, _ in chat.render(CONVO, "plain") for i in hf_tok.encode(text, add_special_tokens=False)
    ]
    assert list(ids) == seg_ids
    assert ids[0] == hf_tok.bos_token_id and ids[-1] == hf_tok.eos_token_id
