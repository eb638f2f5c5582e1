"""smolforge.core.styles: rendered segments and loss flags, and the Jinja template agreeing with them."""

from __future__ import annotations

import pytest

from smolforge.core import styles, tokenizer

CONVO = [
    {"role": "system", "content": "You reduce nets."},
    {"role": "user", "content": "A D B"},
    {"role": "assistant", "content": "D A B =\nD"},
    {"role": "user", "content": "B A"},
    {"role": "assistant", "content": "B A"},
]


@pytest.fixture(scope="module")
def hf_tok():
    texts = ["".join(text for text, _ in styles.render(CONVO, "plain"))] * 5
    return tokenizer.to_hf(tokenizer.train_byte_bpe(texts, 300), styles.template("plain"))


def test_render_assistant_loss():
    assert styles.render(CONVO, "plain") == [
        ("<s>", False),
        ("You reduce nets.\n", False),
        ("A D B\n", False),
        ("D A B =\nD</s>", True),
        ("B A\n", False),
        ("B A</s>", True),
    ]


def test_render_all_loss():
    segs = styles.render(CONVO, "plain", loss_on="all")
    assert [text for text, _ in segs] == [text for text, _ in styles.render(CONVO, "plain")]
    assert [loss for _, loss in segs] == [False, True, True, True, True, True]  # never BOS


def test_prompt_ends_where_the_answer_starts():
    assert styles.prompt(CONVO[:2], "plain") == "<s>You reduce nets.\nA D B\n"
    full = "".join(text for text, _ in styles.render(CONVO[:3], "plain"))
    assert full == styles.prompt(CONVO[:2], "plain") + "D A B =\nD" + styles.EOS


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="unknown chat style 'chatml'"):
        styles.render(CONVO, "chatml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown chat style"):
        styles.template("chatml")  # type: ignore[arg-type]


@pytest.mark.parametrize("n_turns", [2, 3, 5])
def test_template_renders_like_segments(hf_tok, n_turns):
    messages = CONVO[:n_turns]
    text = hf_tok.apply_chat_template(messages, tokenize=False)
    assert text == "".join(t for t, _ in styles.render(messages, "plain"))


@pytest.mark.parametrize("n_turns", [1, 2, 4])
def test_generation_prompt_equals_prompt(hf_tok, n_turns):
    messages = CONVO[:n_turns]
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == styles.prompt(messages, "plain")


def test_template_tokens_equal_segment_tokens(hf_tok):
    ids = hf_tok.apply_chat_template(CONVO, tokenize=True, return_dict=False)
    seg_ids = [
        i for text, _ in styles.render(CONVO, "plain") for i in hf_tok.encode(text, add_special_tokens=False)
    ]
    assert list(ids) == seg_ids
    assert ids[0] == hf_tok.bos_token_id and ids[-1] == hf_tok.eos_token_id


# ---------------------------------------------------------------- template-rendered styles

CHAT = [
    {"role": "system", "content": "You are the author."},
    {"role": "user", "content": "Why small tools?"},
    {"role": "assistant", "content": "You can read all of one."},
    {"role": "user", "content": "And old ones?"},
    {"role": "assistant", "content": "Their flaws are known."},
]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def styled_tok():
    texts = ["<human> <bot> <endOfText> User: Bot: [Chat] <eot> = # ~"] + [m["content"] for m in CHAT]
    return tokenizer.to_hf(tokenizer.train_byte_bpe(texts * 5, 300), CHATML)


@pytest.mark.parametrize("style", ["plain", "human_bot", "chat_builder", "task_tags", "template"])
@pytest.mark.parametrize("n_turns", [3, 5])
def test_segments_join_to_what_apply_chat_template_renders(styled_tok, style, n_turns):
    template = styles.style_template(style, CHATML)
    styled_tok.chat_template = template
    messages = CHAT[:n_turns]
    segs = styles.segments(template, messages, "<s>", "</s>", term="tool", tag="QA")
    whole = styled_tok.apply_chat_template(messages, tokenize=False, term="tool", tag="QA")
    assert "".join(t for t, _ in segs) == whole
    # the prompt for the last answer is exactly the untrained text before it
    prompt = styled_tok.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True, term="tool", tag="QA"
    )
    trained_last = [t for t, m in segs if m][-1]
    assert whole == prompt + trained_last
    assert messages[-1]["content"] in trained_last


def test_only_assistant_text_is_trained_and_headers_are_not():
    segs = styles.segments(styles.style_template("template", CHATML), CHAT[:3], "", "")
    trained = [t for t, m in segs if m]
    assert trained == ["You can read all of one.<|im_end|>\n"]
    assert ("<|im_start|>assistant\n", False) in segs


def test_loss_on_all_trains_every_turn_but_keeps_the_text():
    a = styles.segments(styles.style_template("human_bot"), CHAT, "", "", loss_on="assistant")
    b = styles.segments(styles.style_template("human_bot"), CHAT, "", "", loss_on="all")
    assert [t for t, _ in a] == [t for t, _ in b] and all(m for _, m in b)


def test_style_extras_term_and_tag():
    cb = styles.segments(styles.style_template("chat_builder"), CHAT[1:3], "", "", term="tool")
    assert "".join(t for t, _ in cb) == "~ tool\n= Why small tools?\n# You can read all of one.\n"
    tt = styles.segments(styles.style_template("task_tags"), CHAT[1:3], "<s>", "</s>")
    assert (
        "".join(t for t, _ in tt)
        == "User: [Chat] Why small tools?</s>\nBot: [Chat] You can read all of one.</s>\n"
    )
    qa = styles.segments(styles.style_template("task_tags", default_tag="QA"), CHAT[1:3], "<s>", "</s>")
    assert "".join(t for t, _ in qa).startswith("User: [QA] Why small tools?</s>\nBot: [QA] ")


def test_a_template_whose_turns_do_not_extend_each_other_is_refused():
    # renders the last message only: earlier turns vanish from the text
    bad = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(ValueError, match="does not extend"):
        styles.segments(bad, CHAT[1:3], "", "")


def test_template_style_needs_a_tokenizer_template():
    with pytest.raises(ValueError, match="needs a tokenizer that has a chat template"):
        styles.style_template("template", None)
    with pytest.raises(ValueError, match="unknown chat style 'chatml'"):
        styles.style_template("chatml")


def test_completion_keeps_the_title_and_ends_with_eos():
    assert styles.completion("T", "body", "template", "<s>", "</s>") == [("T\n\nbody</s>", True)]
    assert styles.completion("T", "body", "plain", "<s>", "</s>") == [("<s>T\n\nbody</s>", True)]
    assert styles.completion("T", "body", "task_tags", "", "E") == [("[Textbook] T\nbodyE", True)]
