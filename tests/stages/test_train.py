"""Stage train: an HF directory that transformers loads as it is, with its model card;
resume after a crash; the torchrun relaunch; refusal of missing or malformed input."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import shutil

import pytest
import torch
import yaml

from smolforge.core import card, tokens, validation
from smolforge.core import train as training
from smolforge.core.cli import run
from smolforge.core.params import load_params
from stages import train
from tests.conftest import listing, train_argv


def test_output_loads_with_auto_classes(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = tiny_run["hf"]
    model = AutoModelForCausalLM.from_pretrained(str(hf))
    tok = AutoTokenizer.from_pretrained(str(hf))
    assert model.config.model_type == "llama" and model.config.num_key_value_heads == 1
    text = tok.apply_chat_template(
        [{"role": "user", "content": "A D B"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<s>A D B\n"
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_the_model_card_carries_pretokenize_task_and_tokenizer(tiny_run):
    meta = json.loads((tiny_run["tokens"] / "meta.json").read_text())
    c = card.read_card(tiny_run["hf"])
    assert c.card_version == card.CARD_VERSION
    assert c.task.to_dict() == meta["task"] and c.task.task == "nets" and c.task.layout["trace"] == "step"
    assert (c.tokenizer, c.tokenizer_sha256) == (meta["tokenizer"], meta["tokenizer_sha256"])
    assert c.init == "scratch" and c.base is None  # the tiny nets params name no base
    p = load_params("train.nets", training.TrainParams, tiny_run["params"])
    assert c.train_params == dataclasses.asdict(p)


def test_a_lora_card_names_its_base(tiny_chat_run):
    c = card.read_card(tiny_chat_run["hf"])
    assert (c.init, c.base, c.tokenizer) == ("lora", str(tiny_chat_run["base"]), "base")
    p = load_params("train.chat", training.TrainParams, tiny_chat_run["params"])
    assert c.task.task == "chat" and c.train_params == dataclasses.asdict(p)


def test_each_init_names_a_module_that_builds_and_saves_its_model():
    assert train.INITS == {init: f"smolforge.inits.{init}" for init in ("scratch", "lora", "full")}
    for init, name in train.INITS.items():
        lib = importlib.import_module(name)
        assert callable(lib.build) and callable(lib.save), init


def tsv(path) -> list[list[str]]:
    return [row.split("\t") for row in path.read_text().splitlines()]


def test_live_folder_holds_headline_metrics_and_step_series(tiny_run):
    live = tiny_run["dir"] / "metrics/train"
    metrics = json.loads((live / "metrics.json").read_text())
    assert sorted(metrics) == [
        "n_params",
        "n_trainable",
        "step",
        "tokens_seen",
        "train_loss",
        "val_bpb",
        "val_loss",
    ]
    # bits per byte: the validation loss (nats per target token) over the target text's bytes
    # over the validation examples train scores (eval_examples of them)
    meta = json.loads((tiny_run["tokens"] / "meta.json").read_text())
    split = tokens.read_split(tiny_run["tokens"], "val", meta)
    n = yaml.safe_load(tiny_run["params"].read_text())["train"]["nets"]["eval_examples"]
    targets, n_bytes = validation.target_count(split, n), validation.target_bytes(split, n)
    assert 0 < targets < n_bytes  # a target token here is one or more bytes of text
    assert metrics["val_bpb"] == pytest.approx(
        metrics["val_loss"] * targets / math.log(2) / n_bytes, abs=2e-4
    )
    assert metrics["step"] == 12 and metrics["n_params"] == metrics["n_trainable"] > 1000
    assert metrics["val_loss"] == round(metrics["val_loss"], 4)  # machine-level digits rounded off
    assert sorted(p.name for p in (live / "plots/metrics").iterdir()) == [
        "lr.tsv",
        "train_loss.tsv",
        "val_loss.tsv",
    ]
    curve = tsv(live / "plots/metrics/train_loss.tsv")  # dvclive's own format: step<TAB>name
    assert curve[0] == ["step", "train_loss"] and [r[0] for r in curve[1:]] == ["3", "6", "9", "12"]
    assert [r[0] for r in tsv(live / "plots/metrics/val_loss.tsv")[1:]] == ["6", "12"]
    assert float(curve[-1][1]) < float(curve[1][1])  # it learns something even in 12 steps
    assert abs(float(curve[-1][1]) - metrics["train_loss"]) < 1e-4
    # speed varies by machine: the timing file has it, the live folder (an output) does not
    assert json.loads((tiny_run["dir"] / "metrics/train_timing.json").read_text())["tokens_per_s"] > 0


class Crash(Exception):
    pass


def test_resume_after_crash_matches_an_uninterrupted_run(tiny_run, tmp_path, monkeypatch):
    paths = {**tiny_run, "hf": tmp_path / "hf", "state": tmp_path / "state"}
    m = tmp_path / "metrics"
    real_lr_at = training.lr_at
    seen_live = {}

    def crash_at_step_10(step, p):
        if step == 10:
            # what dvc exp show sees mid-run: the latest logged step (the window of step 9)
            seen_live.update(json.loads((m / "train/metrics.json").read_text()))
            raise Crash()
        return real_lr_at(step, p)

    # the tiny params checkpoint every 4 steps and log every 3: the crash at step 10 comes
    # after step 9 was logged live but before it was checkpointed
    monkeypatch.setattr(training, "lr_at", crash_at_step_10)
    with pytest.raises(Crash):
        train.main(train_argv(tiny_run["params"], paths, m))
    assert not paths["hf"].exists()  # nothing half-written
    assert (paths["state"] / "ckpt.pt").is_file()
    assert seen_live["step"] == 9 and "tokens_per_s" in seen_live
    assert [r[0] for r in tsv(m / "train/plots/metrics/train_loss.tsv")[1:]] == ["3", "6", "9"]
    # resumed from step 8: what the live folder shows once step 9 is logged again
    seen_resumed = {}

    def look_at_step_10(step, p):
        if step == 10:
            seen_resumed["train_loss"] = tsv(m / "train/plots/metrics/train_loss.tsv")
        return real_lr_at(step, p)

    monkeypatch.setattr(training, "lr_at", look_at_step_10)
    train.main(train_argv(tiny_run["params"], paths, m))
    assert [r[0] for r in seen_resumed["train_loss"][1:]] == ["3", "6", "9"]  # 9 once, live too

    from safetensors.torch import load_file

    resumed = load_file(paths["hf"] / "model.safetensors")
    straight = load_file(tiny_run["hf"] / "model.safetensors")
    assert resumed.keys() == straight.keys()
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    # the same step series, no step twice (9 was logged before the crash and again after)
    ref = tiny_run["dir"] / "metrics/train"
    for name in ("train_loss", "lr", "val_loss"):
        path = f"plots/metrics/{name}.tsv"
        assert (m / "train" / path).read_text() == (ref / path).read_text(), name
    assert (m / "train/metrics.json").read_text() == (ref / "metrics.json").read_text()


def test_resume_after_a_crash_that_removed_the_live_folder(tiny_run, tmp_path, monkeypatch):
    """dvc repro deletes a stage's outputs before rerunning it: the series comes back from
    the checkpoint."""
    paths = {**tiny_run, "hf": tmp_path / "hf", "state": tmp_path / "state"}
    m = tmp_path / "metrics"
    real_lr_at = training.lr_at

    def crash_at_step_7(step, p):
        if step == 7:
            raise Crash()
        return real_lr_at(step, p)

    monkeypatch.setattr(training, "lr_at", crash_at_step_7)
    with pytest.raises(Crash):
        train.main(train_argv(tiny_run["params"], paths, m))
    shutil.rmtree(m / "train")
    seen_resumed = {}

    def look_at_step_7(step, p):
        if step == 7:  # resumed from step 4, step 6 logged again: 3 came back from the checkpoint
            seen_resumed["train_loss"] = tsv(m / "train/plots/metrics/train_loss.tsv")
        return real_lr_at(step, p)

    monkeypatch.setattr(training, "lr_at", look_at_step_7)
    train.main(train_argv(tiny_run["params"], paths, m))
    assert [r[0] for r in seen_resumed["train_loss"][1:]] == ["3", "6"]
    ref = tiny_run["dir"] / "metrics/train"
    for name in ("train_loss", "lr", "val_loss"):
        path = f"plots/metrics/{name}.tsv"
        assert (m / "train" / path).read_text() == (ref / path).read_text(), name


def test_missing_tokens_folder_is_a_clear_error(tiny_run, tmp_path, caplog):
    paths = {**tiny_run, "tokens": tmp_path / "nope", "hf": tmp_path / "hf", "state": tmp_path / "state"}
    assert run(train.main, train_argv(tiny_run["params"], paths, tmp_path / "m")) == 2
    assert "nope/meta.json: file not found (written by stage pretokenize" in caplog.text
    assert listing(tmp_path) == []


def test_a_malformed_task_in_pretokenize_meta_is_refused_up_front(tiny_run, tmp_path, caplog):
    tokens = tmp_path / "tokens"
    shutil.copytree(tiny_run["tokens"], tokens)
    meta = json.loads((tokens / "meta.json").read_text())
    del meta["task"]["stop"]
    (tokens / "meta.json").write_text(json.dumps(meta))
    paths = {**tiny_run, "tokens": tokens, "hf": tmp_path / "hf", "state": tmp_path / "state"}
    assert run(train.main, train_argv(tiny_run["params"], paths, tmp_path / "m")) == 2
    assert f"{tokens}/meta.json: 1 problem(s)" in caplog.text
    assert "task.stop: missing key (list[str]) (written by stage pretokenize" in caplog.text
    assert listing(tmp_path) == ["tokens", *(f"tokens/{p}" for p in listing(tokens))]  # nothing written


def test_sequence_longer_than_model_is_refused_up_front(tiny_run, tmp_path, caplog):
    params = tmp_path / "params.yaml"
    data = yaml.safe_load(tiny_run["params"].read_text())
    data["train"]["nets"]["model"]["max_seq_len"] = 8
    data["convert"]["nets"]["modelfile"]["num_ctx"] = 8  # else the sections conflict: refused before train
    params.write_text(yaml.safe_dump(data))
    paths = {**tiny_run, "hf": tmp_path / "hf", "state": tmp_path / "state"}
    assert run(train.main, train_argv(params, paths, tmp_path / "m")) == 2
    counts = json.loads((tiny_run["tokens"] / "meta.json").read_text())["counts"]
    longest = max(counts["train"]["max_example_tokens"], counts["val"]["max_example_tokens"])
    assert (
        f"train.nets.model.max_seq_len 8 is shorter than the longest example ({longest} tokens)"
        in caplog.text
    )
    assert f"set it to {longest} or more, or to auto" in caplog.text
    assert listing(tmp_path) == ["params.yaml"]
    shutil.rmtree(tmp_path / "m", ignore_errors=True)


def test_max_seq_len_auto_is_the_longest_example_validation_included(tiny_run, tmp_path):
    from transformers import AutoConfig

    # validation examples are longer than any training example: auto must hold them too
    tokens = tmp_path / "tokens"
    shutil.copytree(tiny_run["tokens"], tokens)
    meta = json.loads((tokens / "meta.json").read_text())
    longest = meta["counts"]["train"]["max_example_tokens"]
    meta["counts"]["val"]["max_example_tokens"] = longest + 7
    (tokens / "meta.json").write_text(json.dumps(meta))
    data = yaml.safe_load(tiny_run["params"].read_text())
    data["train"]["nets"].update(max_steps=1, eval_every=1, checkpoint_every=1)
    data["train"]["nets"]["model"]["max_seq_len"] = "auto"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    paths = {**tiny_run, "tokens": tokens, "hf": tmp_path / "hf", "state": tmp_path / "state"}
    train.main(train_argv(params, paths, tmp_path / "m"))
    assert AutoConfig.from_pretrained(str(paths["hf"])).max_position_embeddings == longest + 7
    assert card.read_card(paths["hf"]).train_params["model"]["max_seq_len"] == "auto"


def test_processes_above_one_relaunches_the_same_command_under_torchrun(tiny_run, tmp_path, monkeypatch):
    import subprocess
    import sys

    params = tmp_path / "params.yaml"
    params.write_text(tiny_run["params"].read_text().replace("processes: 1", "processes: 2"))
    argv = train_argv(
        params, {**tiny_run, "hf": tmp_path / "hf", "state": tmp_path / "state"}, tmp_path / "m"
    )
    seen = []
    monkeypatch.setattr(
        train.subprocess, "run", lambda cmd: seen.append(cmd) or subprocess.CompletedProcess(cmd, 0)
    )
    train.main(argv)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert seen == [[*launcher, "-m", "stages.train", *argv]]
    assert listing(tmp_path) == ["params.yaml"]  # the ranks write, not the launcher
    monkeypatch.setattr(train.subprocess, "run", lambda cmd: subprocess.CompletedProcess(cmd, 1))
    assert run(train.main, argv) == 2
