"""Stage convert in-process: GGUF files and parity metrics from a tiny HF Llama, and bad inputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from smolforge import chat, tokenizer, tokens
from smolforge.cli import run
from smolforge.model import LlamaShape, build, llama_config
from stages import convert

pytest.importorskip("llama_cpp")

SHAPE = LlamaShape(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=128, rope_theta=10000.0
)


def net_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    nets = ["".join(rng.choice("ABCD") for _ in range(rng.randint(0, 8))) for _ in range(n)]
    return [f"{' '.join(a) or 'EMPTY'}\n{' '.join(reversed(a)) or 'EMPTY'} =" for a in nets]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """train's HF dir and pretokenize's folder for a random tiny Llama."""
    root = tmp_path_factory.mktemp("convert_in")
    tok = tokenizer.to_hf(tokenizer.train_byte_bpe(net_texts(300), 300), chat.template("plain"))
    config = llama_config(SHAPE, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    config.initializer_range = 0.2  # well-separated logits
    hf = root / "hf"
    build(config, seed=0).save_pretrained(hf)
    tok.save_pretrained(hf)

    tok_dir = root / "pretokenize"
    tok_dir.mkdir()
    dtype = tokens.token_dtype(len(tok))
    examples = []
    for text in net_texts(5, seed=1):
        ids = tok(f"<s>{text}</s>", add_special_tokens=False).input_ids
        examples.append((ids, [0] + [1] * (len(ids) - 1)))
    tokens.write_split(tok_dir, "val", examples, dtype)
    meta = {"format_version": 1, "vocab_size": len(tok), "dtype": dtype.name}
    (tok_dir / "meta.json").write_text(json.dumps(meta))
    return hf, tok_dir


def write_params(tmp_path: Path, file_types: list[str]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(
        f"convert:\n  nets:\n    file_types: {json.dumps(file_types)}\n"
        "    parity_examples: 3\n    threads: 2\n"
    )
    return path


def argv(tmp_path: Path, hf: Path, tok_dir: Path) -> list[str]:
    return [
        "--params",
        str(tmp_path / "params.yaml"),
        "--model",
        "nets",
        "--hf",
        str(hf),
        "--tokens",
        str(tok_dir),
        "--out",
        str(tmp_path / "gguf"),
        "--metrics",
        str(tmp_path / "m.json"),
    ]


def test_convert_writes_gguf_and_parity_metrics(tmp_path, inputs, capsys):
    hf, tok_dir = inputs
    write_params(tmp_path, ["f32", "f16", "q8_0"])
    convert.main(argv(tmp_path, hf, tok_dir))

    files = sorted(p.name for p in (tmp_path / "gguf").iterdir())
    assert files == ["model-f16.gguf", "model-f32.gguf", "model-q8_0.gguf"]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"f32", "f16", "q8_0"}
    assert metrics["f32"]["max_abs_logit_diff"] < 1e-3 and metrics["f32"]["top1_agreement"] == 1.0
    assert metrics["f16"]["max_abs_logit_diff"] < 0.05
    assert metrics["q8_0"]["top1_agreement"] >= 0.85
    assert metrics["q8_0"]["quantized_tensors"] == 1 + 2 * 7 and metrics["q8_0"]["kept_tensors"] == 0
    assert metrics["f16"]["quantized_tensors"] == 0
    for ft, m in metrics.items():
        assert m["tokenizer_match"] == 1.0
        assert m["bytes"] == (tmp_path / "gguf" / f"model-{ft}.gguf").stat().st_size
    assert metrics["q8_0"]["bytes"] < metrics["f16"]["bytes"] < metrics["f32"]["bytes"]
    # stage logs go to stderr (smolforge.log.setup), one summary line per file type
    summaries = [line for line in capsys.readouterr().err.splitlines() if "top-1" in line]
    assert len(summaries) == 3 and "convert: f32: " in summaries[0]


def test_missing_hf_dir_fails_cleanly(tmp_path, inputs, capsys):
    _, tok_dir = inputs
    write_params(tmp_path, ["f16"])
    missing = tmp_path / "models" / "hf"
    assert run(convert.main, argv(tmp_path, missing, tok_dir)) == 2
    err = capsys.readouterr().err
    assert f"{missing}/config.json: file not found (written by stage train; run: dvc repro train)" in err
    assert not (tmp_path / "gguf").exists() and not (tmp_path / "m.json").exists()


def test_non_llama_config_names_the_file(tmp_path, inputs, capsys):
    hf, tok_dir = inputs
    write_params(tmp_path, ["f16"])
    fake = tmp_path / "hf"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 300}))
    assert run(convert.main, argv(tmp_path, fake, tok_dir)) == 2
    message = capsys.readouterr().err
    assert f"{fake}/config.json" in message and "'gpt2'" in message
    assert "(written by stage train; run: dvc repro train)" in message
    assert not (tmp_path / "gguf").exists() and not (tmp_path / "m.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "params.yaml"]


def test_bad_params_are_reported_before_any_work(tmp_path, inputs, capsys):
    hf, tok_dir = inputs
    (tmp_path / "params.yaml").write_text(
        "convert:\n  nets:\n    file_types: [q4_0]\n    parity_examples: 3\n    threads: two\n"
    )
    assert run(convert.main, argv(tmp_path, hf, tok_dir)) == 2
    message = capsys.readouterr().err
    assert "convert.nets.file_types[0]" in message and "convert.nets.threads" in message
    assert not (tmp_path / "gguf").exists() and not (tmp_path / "m.json").exists()


def test_params_check_values():
    bad = convert.ConvertParams(file_types=[], parity_examples=0, threads=0).check()
    assert [e.split(":")[0] for e in bad] == ["file_types", "parity_examples", "threads"]
