"""Stage pretokenize: token files agree with the tokenizer for every backend; bad params,
malformed input and a doubled BOS are refused with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from smolforge.core import tokenizer, tokens
from smolforge.core.cli import run
from smolforge.core.params import read_yaml
from stages import pretokenize


def run_stage(params: Path, src: Path, out: Path, metrics: Path) -> int:
    argv = ["--params", str(params), "--model", "nets", "--in", str(src), "--out", str(out)]
    return run(pretokenize.main, [*argv, "--metrics", str(metrics)])


def params_with(tiny_run, tmp_path: Path, **section) -> Path:
    """The tiny params with `pretokenize.nets` changed (a value of ... deletes the key)."""
    data = read_yaml(tiny_run["params"])
    nets = {**data["pretokenize"]["nets"], **section}
    data["pretokenize"]["nets"] = {k: v for k, v in nets.items() if v is not ...}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def copy_format(tiny_run, tmp_path: Path) -> Path:
    src = tmp_path / "fmt"
    shutil.copytree(tiny_run["format"], src)
    return src


def edit_record(path: Path, index: int, edit) -> None:
    lines = path.read_text().splitlines()
    rec = json.loads(lines[index])
    edit(rec)
    lines[index] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")


def check_token_files(out: Path, fmt: Path) -> dict:
    """Every third val example decodes to its rendered text, and its loss mask to the trained part."""
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer_sha256"] == tokenizer.file_hash(out / "tokenizer")
    tok = tokenizer.load(out / "tokenizer")
    split = tokens.read_split(out, "val", meta)
    records = [json.loads(line) for line in (fmt / "val.jsonl").read_text().splitlines()]
    assert len(split) == len(records) == meta["counts"]["val"]["n_examples"]
    for i in range(0, len(records), 3):
        ids, mask = split.example(i)
        segs = records[i]["segments"]
        assert tok.decode(ids.tolist()) == "".join(t for t, _ in segs)
        trained = tok.decode([t for t, m in zip(ids.tolist(), mask.tolist()) if m])
        assert trained == "".join(t for t, m in segs if m)
        # bits per byte's denominator: the UTF-8 bytes of the trained text
        assert split.target_bytes[i] == len(trained.encode("utf-8")) > 0
    assert meta["val_sources"] == [r["source"] for r in records]
    return meta


def test_token_files_decode_to_the_rendered_text(tiny_run):
    out = tiny_run["tokens"]
    meta = check_token_files(out, tiny_run["format"])
    assert meta["format_version"] == 2 and meta["dtype"] == "uint16" and meta["tokenizer"] == "byte_bpe"
    # format's task record, passed on unchanged: no list of keys to forget one from
    fmeta = json.loads((tiny_run["format"] / "meta.json").read_text())
    assert meta["task"] == fmeta["task"] and meta["task"]["task"] == "nets"
    assert meta["task"]["layout"]["trace"] == "step" and meta["task"]["stop"] == []
    metrics = json.loads((tiny_run["dir"] / "metrics" / "pretokenize.json").read_text())
    assert metrics["segment_boundary_mismatches"] == 0 and metrics["vocab_size"] == meta["vocab_size"]


def test_sentencepiece_backend(tiny_run, tmp_path):
    # a base and an encoding left set are ignored: switching the backend is one param
    params = params_with(
        tiny_run, tmp_path, tokenizer="sentencepiece", vocab_size=300, base="embedded", encoding="cl100k_base"
    )
    out, metrics = tmp_path / "tok", tmp_path / "m.json"
    assert run_stage(params, tiny_run["format"], out, metrics) == 0
    meta = check_token_files(out, tiny_run["format"])
    assert meta["tokenizer"] == "sentencepiece" and (out / "tokenizer" / "tokenizer.model").is_file()
    assert "base" not in meta and "encoding" not in meta  # what it ignored is not recorded
    assert (meta["bos_id"], meta["eos_id"], meta["pad_id"]) == (1, 2, 3)
    assert json.loads(metrics.read_text())["segment_boundary_mismatches"] == 0


@pytest.mark.slow
def test_tiktoken_backend_writes_uint32(tiny_run, tmp_path):
    params = params_with(tiny_run, tmp_path, tokenizer="tiktoken", vocab_size=None, encoding="cl100k_base")
    out, metrics = tmp_path / "tok", tmp_path / "m.json"
    assert run_stage(params, tiny_run["format"], out, metrics) == 0
    meta = check_token_files(out, tiny_run["format"])
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 100279 and meta["encoding"] == "cl100k_base"
    assert (out / "train.bin").stat().st_size == 4 * meta["counts"]["train"]["n_tokens"]
    assert json.loads(metrics.read_text())["segment_boundary_mismatches"] == 0


def test_param_problems_are_listed_together(tiny_run, tmp_path, caplog):
    params = params_with(tiny_run, tmp_path, tokenizer="tiktoken", base=3, encoding=["o200k"], vocab=1)
    out, metrics = tmp_path / "tok", tmp_path / "m.json"
    assert run_stage(params, tiny_run["format"], out, metrics) == 2
    assert "3 problem(s) in section pretokenize.nets" in caplog.text
    assert "pretokenize.nets.base: expected str, got 3" in caplog.text  # ignored, but typed
    assert "pretokenize.nets.encoding: expected str, got ['o200k']" in caplog.text
    assert "pretokenize.nets.vocab: unknown key (did you mean vocab_size?)" in caplog.text
    assert not out.exists() and not metrics.exists()


def test_a_backend_needs_its_own_fields(tiny_run, tmp_path, caplog):
    params = params_with(tiny_run, tmp_path, tokenizer="sentencepiece", vocab_size=None, encoding="o200k")
    out, metrics = tmp_path / "tok", tmp_path / "m.json"
    assert run_stage(params, tiny_run["format"], out, metrics) == 2
    assert "1 problem(s) in section pretokenize.nets" in caplog.text  # encoding: not its field
    assert "pretokenize.nets.vocab_size: required for tokenizer sentencepiece" in caplog.text
    assert not out.exists() and not metrics.exists()


def test_unknown_backend_and_missing_key(tiny_run, tmp_path, caplog):
    params = params_with(tiny_run, tmp_path, tokenizer="wordpiece", encoding=...)
    assert run_stage(params, tiny_run["format"], tmp_path / "tok", tmp_path / "m.json") == 2
    assert "2 problem(s)" in caplog.text
    assert (
        "pretokenize.nets.tokenizer: expected one of 'base', 'sentencepiece', 'tiktoken', 'byte_bpe'"
        in caplog.text
    )
    assert "pretokenize.nets.encoding: missing key" in caplog.text


def test_unknown_offline_encoding(tiny_run, tmp_path, caplog):
    params = params_with(tiny_run, tmp_path, tokenizer="tiktoken", vocab_size=None, encoding="o200k_base")
    assert run_stage(params, tiny_run["format"], tmp_path / "tok", tmp_path / "m.json") == 2
    assert "pretokenize.nets.encoding: 'o200k_base' does not ship offline (known: cl100k_base)" in caplog.text


def test_malformed_segments_are_refused(tiny_run, tmp_path, caplog):
    src = copy_format(tiny_run, tmp_path)
    edit_record(src / "train.jsonl", 0, lambda rec: rec.update(segments=[["<s>", "yes"]]))
    out = tmp_path / "tok"
    assert run_stage(tiny_run["params"], src, out, tmp_path / "m.json") == 2
    assert f'{src / "train.jsonl"}:1: field "segments"' in caplog.text
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_double_bos_is_refused(tiny_run, tmp_path, caplog):
    src = copy_format(tiny_run, tmp_path)

    def double(rec):
        rec["segments"][0][0] = "<s>" + rec["segments"][0][0]

    edit_record(src / "val.jsonl", 2, double)
    edit_record(src / "val.jsonl", 4, double)
    out = tmp_path / "tok"
    assert run_stage(tiny_run["params"], src, out, tmp_path / "m.json") == 2
    assert f"{src / 'val.jsonl'}:3: example starts with BOS '<s>' twice (2 example(s) do)" in caplog.text
    assert "(written by stage format; run: dvc repro format)" in caplog.text
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_a_token_across_a_segment_edge_is_counted(tiny_run, tmp_path, caplog):
    """Cutting " A" (one token) into " " | "A" gives other ids than the whole text."""
    src = copy_format(tiny_run, tmp_path)
    lines = (src / "val.jsonl").read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if " A" in json.loads(line)["segments"][1][0])

    def cut(rec):
        text, loss = rec["segments"][1]
        k = text.index(" A") + 1
        rec["segments"][1:2] = [[text[:k], loss], [text[k:], loss]]

    edit_record(src / "val.jsonl", index, cut)
    metrics = tmp_path / "m.json"
    assert run_stage(tiny_run["params"], src, tmp_path / "tok", metrics) == 0
    assert json.loads(metrics.read_text())["segment_boundary_mismatches"] == 1
    assert f"{src / 'val.jsonl'}: 1 example(s) tokenize differently" in caplog.text
    assert f"(first: line {index + 1})" in caplog.text
