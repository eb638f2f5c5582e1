"""llama.cpp stops where training ended a turn, for every chat style: a tiny model trained
through the real stages, its GGUF's end-of-turn token end-of-generation, and
`create_chat_completion` (what `llama_cpp.server` serves) finishing with "stop".

The models are honest, not rigged: the tiny random base of tests/fixtures/chat_corpus.py,
fully finetuned for 120 steps on the fixture's QA pairs (about 4 s a style on 2 CPU
cores, train loss 0.01), learns to answer a training question and to end the answer with
the style's end token; nothing in the weights is set by hand. A control shows that
without its end-of-turn token in the GGUF the same model runs to the token limit.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from smolforge.core import styles
from smolforge.gguf import export
from tests.conftest import TINY_PARAMS, chat_train_argv, point_chat_at

STYLES = ["template", "human_bot", "chat_builder", "task_tags", "plain"]


def tiny_params(d, base, style: str):
    """The tiny params with the chat model fully finetuned in `style` long enough to memorize."""
    params = d / "params.yaml"
    shutil.copy(TINY_PARAMS, params)
    point_chat_at(params, base)
    data = yaml.safe_load(params.read_text())
    data["format"]["chat"].update(chat_style=style, sources={"essays": 0.0, "conversations": 0.0, "qa": 1.0})
    shape = dict(data["train"]["nets"]["model"], max_seq_len=512)
    data["train"]["chat"].update(
        init="full", model=shape, max_steps=120, lr=5e-3, min_lr=5e-4, warmup_steps=10,
        eval_every=120, checkpoint_every=120, log_every=40, threads=1,
    )  # fmt: skip
    data["convert"]["chat"].update(
        file_types=["f32"], modelfile={"file_type": "f32", "temperature": 0.0, "num_ctx": "auto"}
    )
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    return params


@pytest.fixture(scope="module", params=STYLES)
def trained(request, tmp_path_factory, tiny_base):
    """format -> pretokenize -> train -> convert of the chat model in one style."""
    from stages import convert, pretokenize, train
    from stages import format as format_stage
    from tests.fixtures.chat_corpus import write_synthesize_dir

    style = request.param
    d = tmp_path_factory.mktemp(f"stops_{style}")
    params = tiny_params(d, tiny_base, style)
    m = d / "metrics"
    p = {
        "synthesize": write_synthesize_dir(d / "synthesize"),
        "format": d / "format", "tokens": d / "tokens", "hf": d / "hf", "state": d / "state", "gguf": d / "gguf",
    }  # fmt: skip
    io = ["--params", str(params), "--model", "chat"]
    format_stage.main(
        [*io, "--in", str(p["synthesize"]), "--out", str(p["format"]), "--metrics", str(m / "f.json")]
    )
    pretokenize.main(
        [*io, "--in", str(p["format"]), "--out", str(p["tokens"]), "--metrics", str(m / "p.json")]
    )
    train.main(chat_train_argv(params, p, m))
    convert.main(
        [
            *io,
            "--hf",
            str(p["hf"]),
            "--tokens",
            str(p["tokens"]),
            "--out",
            str(p["gguf"]),
            "--metrics",
            str(m / "c.json"),
        ]
    )
    return style, p


def trained_qa(p) -> tuple[str, str, str]:
    """A QA pair of the training split: (system, question, answer)."""
    for line in (p["format"] / "train.jsonl").read_text().splitlines():
        ex = json.loads(line)
        if ex["source"] == "qa":
            turns = {m["role"]: m["content"] for m in ex["messages"]}
            return turns.get("system", ""), turns["user"], turns["assistant"]
    raise AssertionError("no QA pair in the training split")


def test_llama_cpp_chat_completion_stops_at_the_trained_end_token(trained):
    import llama_cpp

    style, p = trained
    llm = llama_cpp.Llama(model_path=str(p["gguf"] / "model-f32.gguf"), n_ctx=0, n_threads=2, verbose=False)
    tok = export.load_source(p["hf"]).tokenizer
    end = styles.turn_end(tok.chat_template, tok.bos_token, tok.eos_token)
    end_id = llm.tokenize(end.encode(), add_bos=False, special=True)[0]
    assert llama_cpp.llama_vocab_is_eog(llm._model.vocab, end_id)

    system, question, answer = trained_qa(p)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}
    ]
    out = llm.create_chat_completion(messages=messages, max_tokens=60, temperature=0.0)
    choice = out["choices"][0]
    # the memorized answer, then the end token: generation stopped by itself, not at the limit
    assert choice["finish_reason"] == "stop", (style, choice)
    assert choice["message"]["content"].strip() == answer, (style, choice)
    assert out["usage"]["completion_tokens"] < 60


@pytest.mark.parametrize("trained", ["chat_builder"], indirect=True)
def test_without_its_end_of_turn_token_chat_builder_runs_to_the_limit(trained, tmp_path, monkeypatch):
    """The control: the same chat_builder model exported without `eot_token_id` (its newline)
    talks past the end of its line until max_tokens."""
    import llama_cpp

    _, p = trained
    monkeypatch.setattr(export, "end_of_turn_id", lambda tok: None)
    path = export.write_gguf(export.load_source(p["hf"]), tmp_path / "no-eot.gguf", "f32").path
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=0, n_threads=2, verbose=False)
    _, question, answer = trained_qa(p)
    out = llm.create_chat_completion(messages=[{"role": "user", "content": question}], max_tokens=60)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"].strip().startswith(answer)
