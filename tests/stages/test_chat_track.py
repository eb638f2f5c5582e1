"""The chat model's stages on a tiny random base: format, train (LoRA, full, scratch),
evaluate and the chat command. The real base (SmolLM2) runs in the slow and e2e tests."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from smolforge.core import styles
from smolforge.core.card import read_card, write_card
from smolforge.core.cli import run
from stages import evaluate, train
from stages import format as format_stage
from tests.conftest import chat_train_argv, listing


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- format


def test_format_mixes_sources_with_weights_and_keeps_val_apart(tiny_chat_run):
    out = tiny_chat_run["format"]
    meta = json.loads((out / "meta.json").read_text())
    counts = meta["counts"]
    assert meta["task"]["task"] == "chat" and meta["task"]["chat_style"] == "template"
    assert counts["train_weighted"]["qa"] == 2 * counts["train"]["qa"]  # qa weight 2.0
    assert counts["train_weighted"]["essays"] == counts["train"]["essays"]
    train, val = records(out / "train.jsonl"), records(out / "val.jsonl")
    assert len(val) == counts["val_examples"] and len(train) == counts["train_examples"]
    text = lambda ex: "".join(t for t, _ in ex["segments"])  # noqa: E731
    assert not {text(ex) for ex in train} & {text(ex) for ex in val}
    essays = [ex for ex in train + val if ex["source"] == "essays"]
    assert essays and all(ex["segments"][0][1] for ex in essays)  # completion: all trained
    assert all(text(ex).endswith("</s>") for ex in essays)
    # chats are rendered by the tokenizer's own template, answers trained, headers not
    chats = [ex for ex in train if ex["source"] != "essays"]
    for ex in chats:
        assert [t for t, m in ex["segments"] if not m][-1].endswith("<s>assistant\n")
        assert text(ex) == styles.render_text(meta["task"]["chat_template"], ex["messages"], "<s>", "</s>")


def test_essays_are_chunked_by_tokens_with_the_title(tiny_chat_run):
    from smolforge.core import pretrained

    tok = pretrained.load_tokenizer(str(tiny_chat_run["base"]))
    essays = [ex for ex in records(tiny_chat_run["format"] / "train.jsonl") if ex["source"] == "essays"]
    for ex in essays:
        title = ex["text"].split("\n\n")[0]
        assert title in ("Small Tools", "Old Tools", "Finishing Things", "Writing Things Down")
        assert len(tok(ex["text"], add_special_tokens=False)["input_ids"]) <= 48


def test_format_refuses_a_chat_that_ends_with_the_user(tiny_chat_run, tmp_path, caplog):
    src = tmp_path / "syn"
    shutil.copytree(tiny_chat_run["synthesize"], src)
    lines = (src / "qa.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["messages"] = rec["messages"][:1]
    lines[1] = json.dumps(rec)
    (src / "qa.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "fmt"
    argv = ["--params", str(tiny_chat_run["params"]), "--model", "chat", "--in", str(src)]
    rc = run(format_stage.main, [*argv, "--out", str(out), "--metrics", str(tmp_path / "m.json")])
    assert rc == 2
    assert f'{src}/qa.jsonl:2: field "messages": the last turn must be the assistant\'s' in caplog.text
    assert "(written by stage synthesize" in caplog.text
    assert listing(tmp_path) == ["syn"] + [f"syn/{f}" for f in sorted(p.name for p in src.iterdir())]


# ---------------------------------------------------------------- train


def test_lora_writes_a_merged_model_and_the_adapter(tiny_chat_run):
    from transformers import AutoModelForCausalLM

    hf = tiny_chat_run["hf"]
    adapter = json.loads((hf / "adapter" / "adapter_config.json").read_text())
    # peft writes this set in hash order, which PYTHONHASHSEED changes: sorted, it is stable
    assert adapter["target_modules"] == ["q_proj", "v_proj"]
    merged = AutoModelForCausalLM.from_pretrained(str(hf))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_chat_run["base"]))
    m, b = merged.state_dict(), base.state_dict()
    assert set(m) == set(b)  # an ordinary Llama, no adapter modules left
    changed = {k for k in m if not torch.equal(m[k], b[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)  # the targets only
    metrics = json.loads((tiny_chat_run["metrics"] / "train/metrics.json").read_text())
    assert metrics["n_trainable"] < metrics["n_params"] / 5 and "base_val_loss" in metrics
    val = (tiny_chat_run["metrics"] / "train/plots/metrics/val_loss.tsv").read_text().splitlines()
    assert val[1].startswith("0\t")  # the curve starts at the base model
    card = read_card(hf)
    assert card.task.task == "chat" and card.init == "lora" and card.train_params["init"] == "lora"
    assert card.base == str(tiny_chat_run["base"]) and card.tokenizer == "base"


class Crash(Exception):
    pass


def test_lora_resume_after_crash_matches_an_uninterrupted_run(tiny_chat_run, tmp_path, monkeypatch):
    paths = {**tiny_chat_run, "hf": tmp_path / "hf", "state": tmp_path / "state"}
    m = tmp_path / "metrics"
    from smolforge.core import train as training

    real = training.lr_at

    def crash_at_step_3(step, p):
        if step == 3:
            raise Crash()
        return real(step, p)

    monkeypatch.setattr(training, "lr_at", crash_at_step_3)
    with pytest.raises(Crash):
        train.main(chat_train_argv(paths["params"], paths, m))
    assert not paths["hf"].exists() and (paths["state"] / "ckpt.pt").is_file()
    ckpt = torch.load(paths["state"] / "ckpt.pt", weights_only=True)
    assert all("lora_" in k for k in ckpt["model"])  # the state holds the adapters only
    monkeypatch.setattr(training, "lr_at", real)
    train.main(chat_train_argv(paths["params"], paths, m))
    from safetensors.torch import load_file

    a = load_file(paths["hf"] / "model.safetensors")
    b = load_file(tiny_chat_run["hf"] / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)
    # one dvclive step series: the base at step 0 once, then every evaluation once
    for name in ("train_loss", "val_loss"):
        path = f"train/plots/metrics/{name}.tsv"
        assert (m / path).read_text() == (tiny_chat_run["metrics"] / path).read_text(), name


@pytest.mark.parametrize("init", ["full", "scratch"])
def test_full_finetune_and_scratch_are_one_param_away(tiny_chat_run, tmp_path, init):
    import yaml

    params = tmp_path / "params.yaml"
    data = yaml.safe_load(tiny_chat_run["params"].read_text())
    c = data["train"]["chat"]
    c.update(init=init, max_steps=2, model=dict(data["train"]["nets"]["model"], max_seq_len=512))
    params.write_text(yaml.safe_dump(data))
    paths = {**tiny_chat_run, "hf": tmp_path / "hf", "state": tmp_path / "state"}
    train.main(chat_train_argv(params, paths, tmp_path / "m"))
    assert (paths["hf"] / "model.safetensors").is_file() and not (paths["hf"] / "adapter").exists()
    metrics = json.loads((tmp_path / "m" / "train/metrics.json").read_text())
    assert metrics["n_trainable"] == metrics["n_params"]


def test_a_finetune_refuses_tokens_from_another_tokenizer(tiny_run, tiny_chat_run, tmp_path, caplog):
    paths = {**tiny_chat_run, "tokens": tiny_run["tokens"], "hf": tmp_path / "hf", "state": tmp_path / "s"}
    rc = run(train.main, chat_train_argv(tiny_chat_run["params"], paths, tmp_path / "m"))
    assert rc == 2 and "tokens were made with tokenizer 'byte_bpe'" in caplog.text
    assert "pretokenize.<model>.tokenizer: base" in caplog.text
    assert listing(tmp_path) == []


def test_lora_params_are_checked_up_front(tiny_chat_run, tmp_path, caplog):
    import yaml

    params = tmp_path / "params.yaml"
    data = yaml.safe_load(tiny_chat_run["params"].read_text())
    data["train"]["chat"]["lora"] = {"r": 0, "alpha": 8.0, "dropout": 1.5, "target_modules": []}
    data["train"]["chat"]["model"] = data["train"]["nets"]["model"]
    params.write_text(yaml.safe_dump(data))
    paths = {**tiny_chat_run, "hf": tmp_path / "hf", "state": tmp_path / "s"}
    rc = run(train.main, chat_train_argv(params, paths, tmp_path / "m"))
    assert rc == 2
    for msg in (
        "lora.r: expected >= 1",
        "lora.dropout",
        "lora.target_modules",
    ):
        assert msg in caplog.text
    lora = {"r": 2, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj"]}
    data["train"]["chat"].update(init="scratch", model=None, lora=lora)
    params.write_text(yaml.safe_dump(data))
    caplog.clear()
    assert run(train.main, chat_train_argv(params, paths, tmp_path / "m")) == 2
    assert "train.chat.model: init scratch needs it (it is null)" in caplog.text
    assert listing(tmp_path) == ["params.yaml"]


# ---------------------------------------------------------------- evaluate and chat


@pytest.fixture(scope="module")
def chat_eval(tiny_chat_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("chat_eval")
    argv = ["--params", str(tiny_chat_run["params"]), "--model", "chat", "--hf", str(tiny_chat_run["hf"])]
    argv += ["--in", str(tiny_chat_run["tokens"]), "--live", str(d / "live")]
    evaluate.main([*argv, "--out", str(d / "out")])
    return d


def test_evaluate_compares_finetune_and_base_on_the_same_tokens(chat_eval, tiny_chat_run):
    m = json.loads((chat_eval / "live/metrics.json").read_text())
    assert m["val_loss"] < m["base_val_loss"]  # trained on this corpus; the base is random
    assert m["val_loss_change"] == pytest.approx(m["val_loss"] - m["base_val_loss"], abs=2e-4)
    # flat headline figures, at most ten, and each source's losses beside them
    flat = {k: v for k, v in m.items() if k != "per_source"}
    assert all(isinstance(v, (int, float)) for v in flat.values()) and len(flat) <= 10
    assert all(isinstance(v, float) for row in m["per_source"].values() for v in row.values())
    assert m["val_loss"] == round(m["val_loss"], 4)
    train_m = json.loads((tiny_chat_run["metrics"] / "train/metrics.json").read_text())
    assert m["base_val_loss"] == pytest.approx(train_m["base_val_loss"], abs=2e-4)  # one definition
    assert m["val_loss"] == pytest.approx(train_m["val_loss"], abs=2e-4)
    rows = json.loads((chat_eval / "live/plots/custom/val_loss_per_example.json").read_text())
    details = json.loads((chat_eval / "out/details.json").read_text())
    assert [r["example"] for r in rows] == list(range(details["val_examples"]))
    assert sorted(rows[0]) == ["base_loss", "example", "finetune_loss", "targets"]
    assert details["val_targets"] == m["val_targets"] and abs(details["val_loss"] - m["val_loss"]) < 1e-4
    # per source: the validation examples split by where they came from, adding up to the whole
    per_source = details["per_source"]
    assert per_source and set(per_source) <= {"essays", "conversations", "qa"}
    assert sum(s["targets"] for s in per_source.values()) == m["val_targets"]
    assert m["val_bpb"] > 0 and m["base_val_bpb"] > 0


def test_evaluate_writes_the_answers_as_a_table(chat_eval):
    table = (chat_eval / "out" / "answers.md").read_text().splitlines()
    assert table[0] == "| prompt | finetune | base |" and len(table) == 4
    assert table[2].startswith("| Why are small tools good? |")
    answers = records(chat_eval / "out" / "answers.jsonl")
    assert [a["prompt"] for a in answers] == ["Why are small tools good?", 'What does "leaf" mean?']


def test_chat_once_uses_the_training_template(tiny_chat_run, capsys, monkeypatch):
    from smolforge.chat import cli, talk

    seen = []
    real = styles.render_text

    def spy(template, messages, *a, **k):
        seen.append(real(template, messages, *a, **k))
        return seen[-1]

    monkeypatch.setattr(talk.styles, "render_text", spy)
    cli.main(
        [
            "--model",
            str(tiny_chat_run["hf"]),
            "--once",
            "Why?",
            "--system",
            "Be brief.",
            "--max-new-tokens",
            "4",
        ]
    )
    assert seen == ["<s>system\nBe brief.</s>\n<s>user\nWhy?</s>\n<s>assistant\n"]


def test_cut_at_stop():
    from smolforge.chat.talk import cut_at_stop

    assert cut_at_stop("hello <endOfText> more", ["<human>", "<endOfText>"]) == "hello"
    assert cut_at_stop("no stop here", ["\n"]) == "no stop here"
    assert cut_at_stop("line one\nline two", ["\n", ""]) == "line one"


def test_chat_with_the_gguf_builds_the_same_prompt_and_knows_the_stop_words(
    tiny_chat_run, tmp_path, monkeypatch
):
    import yaml

    from smolforge.chat import cli, talk
    from stages import convert

    params = tmp_path / "params.yaml"
    data = yaml.safe_load(tiny_chat_run["params"].read_text())
    data["convert"]["chat"].update(
        file_types=["f32"], modelfile={"file_type": "f32", "temperature": 0.7, "num_ctx": 64}
    )
    params.write_text(yaml.safe_dump(data))
    hf = tmp_path / "hf"
    shutil.copytree(tiny_chat_run["hf"], hf)
    card = read_card(hf)
    write_card(
        hf,
        dataclasses.replace(card, task=dataclasses.replace(card.task, stop=["<human>"], system="Be brief.")),
    )
    out = tmp_path / "gguf"
    convert.main(
        [
            "--params",
            str(params),
            "--model",
            "chat",
            "--hf",
            str(hf),
            "--tokens",
            str(tiny_chat_run["tokens"]),
        ]
        + ["--out", str(out), "--metrics", str(tmp_path / "m.json")]
    )
    gguf_chat = talk.load(out / "model-f32.gguf")
    assert gguf_chat.stops == ["<human>"] and gguf_chat.default_system == "Be brief."
    hf_chat = talk.load(hf)
    assert hf_chat.stops == ["<human>"] and hf_chat.default_system == "Be brief."

    seen = []
    real = styles.render_text
    monkeypatch.setattr(talk.styles, "render_text", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    for model in (out / "model-f32.gguf", hf):
        cli.main(["--model", str(model), "--once", "Why?", "--max-new-tokens", "3"])
    assert seen[0] == seen[1] == "<s>system\nBe brief.</s>\n<s>user\nWhy?</s>\n<s>assistant\n"
