"""Stage train: an HF directory that transformers loads as it is, with its model card;
resume after a crash; the torchrun relaunch; refusal of missing or malformed input."""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil

import pytest
import torch

from smolforge.core import card
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


def test_metrics_and_curves(tiny_run):
    m = tiny_run["dir"] / "metrics"
    metrics = json.loads((m / "train.json").read_text())
    assert metrics["steps"] == 12 and metrics["n_params"] > 0 and metrics["tokens_seen"] > 0
    curve = (m / "train_loss.csv").read_text().splitlines()
    assert curve[0] == "step,train_loss,lr" and [r.split(",")[0] for r in curve[1:]] == ["3", "6", "9", "12"]
    val = (m / "val_loss.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in val[1:]] == ["6", "12"]
    first, last = float(curve[1].split(",")[1]), float(curve[-1].split(",")[1])
    assert last < first  # it learns something even in 12 steps


class Crash(Exception):
    pass


def test_resume_after_crash_matches_an_uninterrupted_run(tiny_run, tmp_path, monkeypatch):
    paths = {**tiny_run, "hf": tmp_path / "hf", "state": tmp_path / "state"}
    m = tmp_path / "metrics"
    real_lr_at = training.lr_at

    def crash_at_step_9(step, p):
        if step == 9:
            raise Crash()
        return real_lr_at(step, p)

    monkeypatch.setattr(training, "lr_at", crash_at_step_9)
    with pytest.raises(Crash):
        train.main(train_argv(tiny_run["params"], paths, m))
    assert not paths["hf"].exists()  # nothing half-written
    assert (paths["state"] / "ckpt.pt").is_file()
    monkeypatch.setattr(training, "lr_at", real_lr_at)
    train.main(train_argv(tiny_run["params"], paths, m))

    from safetensors.torch import load_file

    resumed = load_file(paths["hf"] / "model.safetensors")
    straight = load_file(tiny_run["hf"] / "model.safetensors")
    assert resumed.keys() == straight.keys()
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    ref = (tiny_run["dir"] / "metrics/train_loss.csv").read_text()
    assert (m / "train_loss.csv").read_text() == ref


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
    params.write_text(tiny_run["params"].read_text().replace("max_seq_len: 64", "max_seq_len: 8"))
    paths = {**tiny_run, "hf": tmp_path / "hf", "state": tmp_path / "state"}
    assert run(train.main, train_argv(params, paths, tmp_path / "m")) == 2
    assert "max_seq_len 8 is shorter than the longest training example" in caplog.text
    assert listing(tmp_path) == ["params.yaml"]
    shutil.rmtree(tmp_path / "m", ignore_errors=True)


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
