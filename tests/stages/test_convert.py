"""Stage convert in-process: GGUF files, parity metrics, gate and Modelfile from a tiny HF Llama, and bad inputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from smolforge.core import styles, tokenizer, tokens
from smolforge.core.card import CARD_FILE, ModelCard, Task, write_card
from smolforge.core.cli import run
from smolforge.core.model import LlamaShape, build, llama_config, to_hf
from smolforge.gguf.convert import ConvertParams
from smolforge.gguf.modelfile import ModelfileParams
from smolforge.gguf.parity import GateParams
from stages import convert
from tests.conftest import listing

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
    tok = tokenizer.to_hf(tokenizer.train_byte_bpe(net_texts(300), 300), styles.template("plain"))
    config = llama_config(SHAPE, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    config.initializer_range = 0.2  # well-separated logits
    hf = root / "hf"
    to_hf(build(config, seed=0)).save_pretrained(hf)
    tok.save_pretrained(hf)
    # the card as train writes it for a nets model (stop words and persona empty); convert
    # reads only its task
    task = Task("nets", "plain", styles.template("plain"), stop=[], system="", layout={"trace": "full"})
    write_card(hf, ModelCard(1, task, "byte_bpe", "0" * 64, "scratch", None, {"seed": 0}))

    tok_dir = root / "pretokenize"
    tok_dir.mkdir()
    dtype = tokens.token_dtype(len(tok))
    examples = []
    for text in net_texts(5, seed=1):
        ids = tok(f"<s>{text}</s>", add_special_tokens=False).input_ids
        examples.append((ids, [0] + [1] * (len(ids) - 1)))
    tokens.write_split(tok_dir, "val", examples, dtype)
    meta = {"format_version": tokens.FORMAT_VERSION, "vocab_size": len(tok), "dtype": dtype.name}
    (tok_dir / "meta.json").write_text(json.dumps(meta))
    return hf, tok_dir


GATE = {
    "min_top1": {"f32": 0.99, "f16": 0.95, "q8_0": 0.85},
    "max_logit_diff": {"f32": 1e-3, "f16": 0.05, "q8_0": 1.0},
    "min_tokenizer_match": 1.0,
    "max_ppl_ratio": 1.05,  # a random model on 29 tokens: q8_0 is ~2% off f16
}


def write_params(tmp_path: Path, file_types: list[str], **changes) -> Path:
    """convert.nets params for the tiny model; `changes` replace top-level keys."""
    section = {
        "file_types": file_types,
        "parity_examples": 3,
        "threads": 2,
        "gate": GATE,
        "modelfile": {"file_type": file_types[-1], "temperature": 0.0, "num_ctx": 128},
        **changes,
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"convert": {"nets": section}}))
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
    assert files == ["Modelfile", "model-f16.gguf", "model-f32.gguf", "model-q8_0.gguf", "parity.json"]
    metrics = json.loads((tmp_path / "gguf/parity.json").read_text())
    assert set(metrics) == {"f32", "f16", "q8_0", "q8_0_vs_f16_ppl_ratio"}
    # the metrics file holds the headline only, rounded
    headline = json.loads((tmp_path / "m.json").read_text())
    assert headline == {
        **{ft: {"top1_agreement": round(metrics[ft]["top1_agreement"], 4)} for ft in ("f32", "f16", "q8_0")},
        "q8_0_vs_f16_ppl_ratio": round(metrics["q8_0_vs_f16_ppl_ratio"], 4),
    }
    assert metrics["f32"]["max_abs_logit_diff"] < 1e-3 and metrics["f32"]["top1_agreement"] == 1.0
    assert metrics["f16"]["max_abs_logit_diff"] < 0.05
    assert metrics["q8_0"]["top1_agreement"] >= 0.85
    assert metrics["q8_0"]["quantized_tensors"] == 1 + 2 * 7 and metrics["q8_0"]["kept_tensors"] == 0
    assert metrics["f16"]["quantized_tensors"] == 0
    for ft in ("f32", "f16", "q8_0"):
        m = metrics[ft]
        assert m["tokenizer_match"] == 1.0
        assert m["bytes"] == (tmp_path / "gguf" / f"model-{ft}.gguf").stat().st_size
    assert metrics["q8_0"]["bytes"] < metrics["f16"]["bytes"] < metrics["f32"]["bytes"]
    # perplexity on the masked (trained) tokens: llama.cpp's f32 equals HF's
    hf_ppl = metrics["f32"]["hf_perplexity"]
    assert hf_ppl > 1 and all(metrics[ft]["hf_perplexity"] == hf_ppl for ft in ("f16", "q8_0"))
    assert metrics["f32"]["perplexity"] == pytest.approx(hf_ppl, rel=1e-4)
    ratio = metrics["q8_0"]["perplexity"] / metrics["f16"]["perplexity"]
    assert metrics["q8_0_vs_f16_ppl_ratio"] == pytest.approx(ratio) and abs(ratio - 1) < 0.05
    # stage logs go to stderr (smolforge.core.log.setup), one summary line per file type
    summaries = [line for line in capsys.readouterr().err.splitlines() if "top-1" in line]
    assert len(summaries) == 3 and "convert: f32: " in summaries[0] and "perplexity" in summaries[0]

    text = (tmp_path / "gguf" / "Modelfile").read_text()
    assert text.splitlines()[1] == "FROM ./model-q8_0.gguf"
    assert '\nTEMPLATE """<s>{{ if .System }}' in text and 'PARAMETER stop "</s>"\n' in text
    assert "PARAMETER temperature 0\n" in text and text.endswith("PARAMETER num_ctx 128\n")


def test_no_ratio_without_both_f16_and_q8_0(tmp_path, inputs):
    hf, tok_dir = inputs
    write_params(tmp_path, ["f32"])
    convert.main(argv(tmp_path, hf, tok_dir))
    metrics = json.loads((tmp_path / "gguf/parity.json").read_text())
    assert set(metrics) == {"f32"} and metrics["f32"]["perplexity"] > 1
    assert set(json.loads((tmp_path / "m.json").read_text())) == {"f32"}
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir()) == [
        "Modelfile",
        "model-f32.gguf",
        "parity.json",
    ]


def test_failed_gate_exits_2_and_writes_nothing(tmp_path, tiny_run, capsys):
    """The tiny trained nets model against a threshold no q8_0 file can meet."""
    params = yaml.safe_load(tiny_run["params"].read_text())
    params["convert"]["nets"]["gate"]["max_logit_diff"]["q8_0"] = 0.0
    params["convert"]["nets"]["gate"]["min_top1"]["f32"] = 1.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "models" / "nets" / "gguf"
    args = argv(tmp_path, tiny_run["hf"], tiny_run["tokens"])
    args[args.index("--out") + 1] = str(out)
    assert run(convert.main, args) == 2
    err = capsys.readouterr().err
    assert f"parity gate ({tmp_path / 'params.yaml'}: convert.nets.gate) failed" in err
    assert "nothing written" in err and "q8_0: max |logit diff| " in err and "> max_logit_diff 0.0" in err
    assert "f32: top-1" not in err  # f32 agrees everywhere, so only the q8_0 line
    assert listing(tmp_path / "models") == ["nets"]  # no GGUF, no Modelfile, no temp folder
    assert not (tmp_path / "m.json").exists()


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
    write_params(
        tmp_path,
        ["q4_0"],
        threads="two",
        gate={**GATE, "min_top1": {"f32": 1.5, "q5": 0.9}},
        modelfile={"file_type": "f16", "temperature": -1, "num_ctx": 0},
    )
    assert run(convert.main, argv(tmp_path, hf, tok_dir)) == 2
    message = capsys.readouterr().err
    for key in (
        "convert.nets.file_types[0]",
        "convert.nets.threads",
        "convert.nets.gate.min_top1.f32: expected 0..1",
        "convert.nets.gate.min_top1.q5: unknown file type",
        "convert.nets.modelfile.temperature",
        "convert.nets.modelfile.num_ctx",
    ):
        assert key in message, key
    assert not (tmp_path / "gguf").exists() and not (tmp_path / "m.json").exists()


def test_params_check_values():
    gate = GateParams(min_top1={}, max_logit_diff={"f16": 0.1}, min_tokenizer_match=1.0, max_ppl_ratio=1.01)
    mf = ModelfileParams(file_type="q8_0", temperature=0.7, num_ctx=64)
    bad = ConvertParams(file_types=[], parity_examples=0, threads=0, gate=gate, modelfile=mf).check()
    assert [e.split(":")[0] for e in bad] == [
        "file_types",
        "parity_examples",
        "threads",
        "modelfile.file_type",
    ]
    bad = ConvertParams(file_types=["f16"], parity_examples=1, threads=1, gate=gate, modelfile=mf).check()
    assert bad == [
        "gate.min_top1: no threshold for f16 (in file_types)",
        "modelfile.file_type: q8_0 is not in file_types ['f16']",
    ]
    assert GateParams({}, {}, 1.5, 0.9).check() == [
        "min_tokenizer_match: expected 0..1, got 1.5",
        "max_ppl_ratio: expected >= 1, got 0.9",
    ]


def test_num_ctx_beyond_the_model_context_names_param_and_config(tmp_path, inputs, capsys):
    hf, tok_dir = inputs
    write_params(tmp_path, ["f16"], modelfile={"file_type": "f16", "temperature": 0.7, "num_ctx": 4096})
    assert run(convert.main, argv(tmp_path, hf, tok_dir)) == 2
    message = capsys.readouterr().err
    assert "convert.nets.modelfile.num_ctx: 4096 exceeds the model's context length 128" in message
    assert f"{hf}/config.json max_position_embeddings" in message
    assert not (tmp_path / "gguf").exists()


def without_card(hf: Path, bare: Path) -> Path:
    """A copy of `hf` (links to its files) with no model card."""
    bare.mkdir()
    for f in hf.iterdir():
        if f.name != CARD_FILE:
            (bare / f.name).symlink_to(f)
    return bare


def test_missing_card_names_the_file_and_stage(tmp_path, inputs, capsys):
    hf, tok_dir = inputs
    bare = without_card(hf, tmp_path / "hf")
    write_params(tmp_path, ["f16"])
    assert run(convert.main, argv(tmp_path, bare, tok_dir)) == 2
    message = capsys.readouterr().err
    assert f"{bare}/smolforge.json: file not found (written by stage train; run: dvc repro train)" in message
    assert not (tmp_path / "gguf").exists() and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(
    ("card", "problem"),
    [
        (
            {"task": {"task": "nets", "chat_style": "plain"}},
            "card_version none is not one this smolforge reads",
        ),
        ({"card_version": 1, "task": {"task": "nets"}}, "task.stop: missing key"),
    ],
)
def test_a_card_train_did_not_write_is_refused(tmp_path, inputs, capsys, card, problem):
    """A hand-written or older smolforge.json (not a whole card) fails the stage and writes nothing."""
    hf, tok_dir = inputs
    bare = without_card(hf, tmp_path / "hf")
    (bare / CARD_FILE).write_text(json.dumps(card))
    write_params(tmp_path, ["f16"])
    assert run(convert.main, argv(tmp_path, bare, tok_dir)) == 2
    message = capsys.readouterr().err
    assert f"{bare}/smolforge.json: " in message and problem in message
    assert "(written by stage train; run: dvc repro train)" in message
    assert not (tmp_path / "gguf").exists() and not (tmp_path / "m.json").exists()
