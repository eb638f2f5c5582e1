"""bench/ keeps up with the library: its pretokenize benchmark runs end to end (--quick)
and writes a row with a ratio. Timings are not checked (nothing in bench/ asserts speed)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_quick_pretokenize_benchmark_writes_its_rows(tmp_path):
    from bench.__main__ import main

    out = tmp_path / "results.json"
    main(["--quick", "--only", "pretokenize", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(r["ratio"] > 0 and r["name"].startswith("pretokenize") for r in rows)


def test_quick_scratch_benchmark_compares_models_of_equal_size(tmp_path):
    from bench.__main__ import main

    out = tmp_path / "results.json"
    main(["--quick", "--only", "scratch", "--out", str(out)])
    rows = {
        r["name"].split(" (")[0]: r for r in json.loads(out.read_text())["rows"]
    }  # quick: eager sides only
    row, hf = rows["scratch Llama vs nanoGPT-shaped GPT"], rows["HF LlamaForCausalLM vs nanoGPT-shaped GPT"]
    assert row["ratio"] > 0 and hf["ratio"] > 0
    if row["note"].endswith("; CPU kernels"):  # built here: their A/B is shown
        assert rows["scratch Llama, CPU kernels vs torch ops"]["ratio"] > 0
        assert rows["scratch Llama on torch ops alone vs nanoGPT-shaped GPT"]["ratio"] > 0
    llama, gpt = row["note"].split("params ")[1].split(" (Llama) vs ")
    assert llama == gpt.split(" ")[0]  # the comparison is at the same parameter count
