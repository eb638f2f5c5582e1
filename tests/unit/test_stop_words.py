"""Stop words every runtime obeys: each chat style's one-token turn end (trained, and
end-of-generation in the GGUF), task tags chosen at chat time, the persona default, and
context lengths (the GGUF's own in smolforge-chat, `num_ctx: auto` in the Modelfile)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from smolforge.chat import corpus, talk
from smolforge.chat.format import FormatParams, format_records
from smolforge.core import styles
from smolforge.core.card import ModelCard, Task, write_card
from smolforge.core.cli import StageError
from smolforge.core.params import load_params
from smolforge.gguf import export
from smolforge.gguf.modelfile import ModelfileParams
from tests.fixtures.chat_corpus import TINY_TEMPLATE, write_synthesize_dir

STYLES = ["template", "human_bot", "chat_builder", "task_tags", "plain"]
CHAT = [
    {"role": "user", "content": "Why are small tools good?"},
    {"role": "assistant", "content": "You can read all of one."},
]


def style_template(style: str, tag: str = "QA") -> str:
    return styles.style_template(style, TINY_TEMPLATE, tag)


def styled_model(folder: Path, base: Path, style: str) -> Path:
    """The tiny base saved as train saves a model trained in `style` (weights untrained)."""
    from transformers import AutoTokenizer

    shutil.copytree(base, folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.chat_template = style_template(style)
    tok.save_pretrained(str(folder))
    task = Task("chat", style, tok.chat_template, styles.STOP_WORDS[style], "", {})
    write_card(folder, ModelCard(1, task, "base", "0" * 64, "full", str(base), {}))
    return folder


@pytest.fixture(scope="module")
def tok(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_base))


# ---------------------------------------------------------------- the turn's end token


@pytest.mark.parametrize("style", STYLES)
def test_every_style_ends_an_answer_with_one_end_token_inside_the_loss(tok, style):
    segs = styles.segments(style_template(style), CHAT, tok.bos_token, tok.eos_token)
    end = "\n" if style == "chat_builder" else tok.eos_token
    (end_id,) = tok(end, add_special_tokens=False).input_ids
    # pretokenize encodes segment by segment: the answer's tokens, then the end token, all trained
    (ids,) = [tok(text, add_special_tokens=False).input_ids for text, loss in segs if loss]
    assert end_id in ids and tok.decode(ids[: ids.index(end_id)]).strip() == CHAT[1]["content"]


def test_the_turn_end_of_each_style():
    ends = {s: styles.turn_end(style_template(s), "<s>", "</s>") for s in STYLES}
    assert ends == {
        "template": "</s>\n",
        "human_bot": "</s>\n",
        "chat_builder": "\n",
        "task_tags": "</s>\n",
        "plain": "</s>",
    }
    # the next speaker's tag stops a model that skips its end token
    assert styles.STOP_WORDS["human_bot"] == ["<human>", "<bot>"]
    assert styles.STOP_WORDS["task_tags"] == ["\nUser:", "\nBot:"]


@pytest.mark.parametrize("style", STYLES)
def test_the_gguf_makes_each_styles_turn_end_end_of_generation(tiny_base, tmp_path, style):
    import llama_cpp

    src = export.load_source(styled_model(tmp_path / "hf", tiny_base, style))
    path = export.write_gguf(src, tmp_path / "m.gguf", "f32").path
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    vocab = llm._model.vocab
    end = styles.turn_end(src.tokenizer.chat_template, src.tokenizer.bos_token, src.tokenizer.eos_token)
    end_id = llm.tokenize(end.encode(), add_bos=False, special=True)[0]
    assert llama_cpp.llama_vocab_is_eog(vocab, end_id)
    eog = [i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)]
    if style == "chat_builder":  # the newline is the end-of-turn token beside EOS
        assert llama_cpp.llama_vocab_eot(vocab) == end_id and sorted(eog) == sorted([end_id, llm.token_eos()])
    else:  # EOS is the end of a turn: nothing else ends generation
        assert end_id == llm.token_eos() and eog == [end_id] and llama_cpp.llama_vocab_eot(vocab) == -1


@pytest.mark.parametrize("backend", ["sentencepiece", "byte_bpe"])
def test_trained_tokenizers_end_turns_with_one_token_too(backend):
    """The recipes that train their own vocabulary: the EOS format renders is a special token
    of it, and the newline one token (sentencepiece: its byte piece <0x0A>)."""
    from smolforge.core import tokenizer

    texts = [m["content"] for m in CHAT] * 20 + ["line one\nline two\n"] * 20
    specials = tokenizer.Specials("<|im_start|>", "<|im_end|>", "<pad>")
    for style, end in (("human_bot", "<|im_end|>"), ("task_tags", "<|im_end|>"), ("chat_builder", "\n")):
        hf = tokenizer.build(backend, texts, style_template(style), specials, vocab_size=300).hf
        (end_id,) = hf(end, add_special_tokens=False).input_ids
        assert export.end_of_turn_id(hf) == end_id, (backend, style)
    assert end_id != hf.eos_token_id and hf.decode([end_id]) == "\n"


def test_a_marker_of_several_ordinary_tokens_is_not_made_end_of_generation(tok, caplog):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tok.name_or_path)
    t.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<eot>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
    )
    assert len(t("<eot>", add_special_tokens=False).input_ids) > 1
    with caplog.at_level(logging.WARNING, logger="smolforge.gguf.export"):
        assert export.end_of_turn_id(t) is None
    assert "several ordinary tokens" in caplog.text and "'<eot>\\n'" in caplog.text


# ---------------------------------------------------------------- format: default tag, persona


def params(base: Path, style: str, system: str = "", qa: float = 1.0) -> FormatParams:
    sources = {"essays": 0.0, "conversations": 1.0, "qa": qa}
    return FormatParams("chat", sources, style, "assistant", system, str(base), 48, 0.25, 7)


@pytest.fixture
def synth(tmp_path) -> Path:
    folder = write_synthesize_dir(tmp_path / "synthesize")
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(meta | {"persona": "the author of these essays"}))
    return folder


def chats(formatted) -> dict[str, list[list[dict]]]:
    out: dict[str, list] = {"conversations": [], "qa": []}
    for ex in formatted.train + formatted.val:
        out[ex["source"]].append(ex["messages"])
    return out


def test_the_persona_of_the_qa_answers_is_their_system_turn_and_the_default(tiny_base, synth):
    f = format_records(synth, params(tiny_base, "task_tags"), "format.chat")
    assert f.task.system == "You are the author of these essays."
    by_source = chats(f)
    assert by_source["qa"] and all(
        m[0] == {"role": "system", "content": f.task.system} for m in by_source["qa"]
    )
    assert by_source["conversations"] and all(m[0]["role"] == "user" for m in by_source["conversations"])
    # the default task is the persona's: every runtime that passes no tag prompts with [QA]
    prompt = styles.render_text(f.task.chat_template, CHAT[:1], "<s>", "</s>", True)
    assert prompt == "User: [QA] Why are small tools good?</s>\nBot: [QA]"
    qa_text = "".join(t for ex in f.train if ex["source"] == "qa" for t, _ in ex["segments"])
    conv_text = "".join(t for ex in f.train if ex["source"] == "conversations" for t, _ in ex["segments"])
    assert "[QA]" in qa_text and "[Chat]" in conv_text and "[QA]" not in conv_text


def test_format_system_wins_over_the_data_persona_and_no_qa_means_chat(tiny_base, synth):
    f = format_records(synth, params(tiny_base, "human_bot", system="Be brief."), "format.chat")
    assert f.task.system == "Be brief."
    assert all(m[0]["content"] == "Be brief." for ms in chats(f).values() for m in ms)
    f = format_records(synth, params(tiny_base, "task_tags", qa=0.0), "format.chat")
    assert f.task.system == "" and not chats(f)["qa"]
    assert "Bot: [Chat]" in styles.render_text(f.task.chat_template, CHAT[:1], "", "", True)


def test_no_recorded_persona_leaves_the_system_empty_and_a_bad_one_is_refused(tiny_base, tmp_path):
    plain = write_synthesize_dir(tmp_path / "plain")
    assert format_records(plain, params(tiny_base, "template"), "format.chat").task.system == ""
    meta = json.loads((plain / "meta.json").read_text())
    (plain / "meta.json").write_text(json.dumps(meta | {"persona": 3}))
    with pytest.raises(
        StageError, match=r'meta.json: field "persona": expected a string, got 3 \(written by'
    ):
        format_records(plain, params(tiny_base, "template"), "format.chat")


def test_corpus_tags_its_sources_as_styles_says():
    assert corpus._TAGS == styles.TASK_TAGS


def test_a_malformed_default_tag_is_refused():
    with pytest.raises(ValueError, match="task tag 'Q]A' must be"):
        styles.style_template("task_tags", None, "Q]A")


# ---------------------------------------------------------------- smolforge-chat: --tag, context


def test_tag_is_chosen_at_chat_time_and_refused_where_there_are_none():
    template = style_template("task_tags")
    assert talk.tag_extra(template, "", "", None) == {}
    assert talk.tag_extra(template, "", "", "Chat") == {"tag": "Chat"}
    with pytest.raises(StageError, match="--tag: this model's chat template has no task tags"):
        talk.tag_extra(style_template("human_bot"), "", "", "Chat")
    with pytest.raises(StageError, match="--tag: task tag 'a\\\\nb' must be"):
        talk.tag_extra(template, "", "", "a\nb")


@pytest.fixture(scope="module")
def task_tags_gguf(tiny_base, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tags")
    hf = styled_model(root / "hf", tiny_base, "task_tags")
    return hf, export.write_gguf(export.load_source(hf), root / "m.gguf", "f32").path


def test_cli_tag_reaches_the_prompt_of_both_model_kinds(task_tags_gguf, monkeypatch):
    from smolforge.chat import cli

    seen = []
    real = styles.render_text
    monkeypatch.setattr(talk.styles, "render_text", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    for model in task_tags_gguf:
        cli.main(["--model", str(model), "--once", "Why?", "--max-new-tokens", "2"])
        cli.main(["--model", str(model), "--once", "Why?", "--max-new-tokens", "2", "--tag", "Chat"])
    prompts = [p for p in seen if "Why?" in p]  # not tag_extra's probes
    assert prompts == ["User: [QA] Why?</s>\nBot: [QA]", "User: [Chat] Why?</s>\nBot: [Chat]"] * 2


def test_a_gguf_opens_at_its_own_context_length(task_tags_gguf, tiny_base):
    hf, path = task_tags_gguf
    trained = json.loads((tiny_base / "config.json").read_text())["max_position_embeddings"]
    assert trained == 512 and talk.load(path).llm.n_ctx() == trained
    assert talk.load(path, n_ctx=256).llm.n_ctx() == 256  # llama.cpp pads to multiples of 256
    with pytest.raises(StageError, match="--n-ctx: 4096 exceeds the model's context length 512"):
        talk.load(path, n_ctx=4096)
    with pytest.raises(StageError, match="--n-ctx: only a .gguf model takes a context length"):
        talk.load(hf, n_ctx=64)
    with pytest.raises(StageError, match="--n-ctx: expected >= 1, got 0"):
        talk.load(path, n_ctx=0)


def test_modelfile_num_ctx_reads_auto_or_a_number(tmp_path):
    path = tmp_path / "params.yaml"
    for value, want in (("auto", "auto"), ("512", 512)):
        path.write_text(f"m: {{file_type: q8_0, temperature: 0.7, num_ctx: {value}}}\n")
        assert load_params("m", ModelfileParams, path).num_ctx == want
    path.write_text("m: {file_type: q8_0, temperature: 0.7, num_ctx: big}\n")
    with pytest.raises(StageError, match="m.num_ctx: expected int or one of 'auto', got 'big'"):
        load_params("m", ModelfileParams, path)
