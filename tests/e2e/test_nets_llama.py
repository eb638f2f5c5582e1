"""The nets model in llama.cpp: interleaved decoding through llama.cpp's batch API gives
the same greedy tokens as transformers, and evaluate reports the GGUF files' accuracy
beside the HF model's on the same nets."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from smolforge.core.decode import greedy, greedy_interleaved
from smolforge.core.decode_llama import LlamaDecoder
from smolforge.core.hf import load_trained
from smolforge.gguf import export
from stages import evaluate
from tests.stages.test_nets_layout import INTERLEAVED, layout_run


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> dict:
    """A tiny interleaved nets run (smolforge.nets.layouts), exported to f32 and q8_0 GGUF."""
    run = layout_run(tmp_path_factory.mktemp("interleaved_llama"), dataclasses.replace(INTERLEAVED, spread=60))
    src = export.load_source(run["hf"])
    gguf = run["dir"] / "models/nets/gguf"
    gguf.mkdir(parents=True)
    for ft in ("f32", "q8_0"):
        export.write_gguf(src, gguf / f"model-{ft}.gguf", ft)
    return {**run, "gguf": gguf}


def test_llama_cpp_decodes_as_transformers_does(tiny_gguf):
    """Random inputs, many sequences in one llama.cpp context: the f32 GGUF's greedy tokens
    equal HF's token for token, interleaved and plain."""
    model = load_trained(tiny_gguf["hf"])
    c = model.config
    rng = random.Random(0)
    inputs = [[rng.randrange(c.vocab_size - 3) for _ in range(rng.randint(2, 25))] for _ in range(12)]
    end = 10  # any token serves as END here: both decoders must agree on what follows
    want = greedy_interleaved(model, inputs, c.bos_token_id, end, c.eos_token_id, batch_size=5)
    budgets = [rng.randint(1, 20) for _ in inputs]
    want_plain = greedy(model, inputs, budgets, c.pad_token_id, c.eos_token_id, batch_size=5)
    with LlamaDecoder(tiny_gguf["gguf"] / "model-f32.gguf", 5, 64, threads=2) as dec:
        assert dec.greedy_interleaved(inputs, c.bos_token_id, end, c.eos_token_id) == want
        assert dec.greedy(inputs, budgets, c.eos_token_id) == want_plain


def test_evaluate_reports_llama_cpp_beside_hf(tiny_gguf, tmp_path):
    out = tmp_path / "out"
    evaluate.main(
        [
            "--params", str(tiny_gguf["params"]), "--model", "nets", "--hf", str(tiny_gguf["hf"]),
            "--in", str(tiny_gguf["generate"]), "--gguf", str(tiny_gguf["gguf"]),
            "--live", str(out / "live"), "--out", str(out / "preds"),
        ]
    )  # fmt: skip
    m = json.loads((out / "live/metrics.json").read_text())
    assert len(m) == 10 and {"llama_cpp_worst_accuracy", "llama_cpp_max_gap_points"} <= set(m)
    details = json.loads((out / "preds/details.json").read_text())
    q8 = details["llama_cpp"]["q8_0"]
    # the tiny params evaluate at most 20 nets per set in llama.cpp, spread over its lengths
    assert q8["n"] == sum(min(20, details[s]["n"]) for s in ("test", "ood", "stratified12", "swaps"))
    gaps = [
        abs(g["final_answer_accuracy"] - g["hf_final_answer_accuracy"])
        for key, table in q8.items()
        if key.endswith("_by_length")
        for g in table.values()
    ]
    assert m["llama_cpp_max_gap_points"] == round(100 * max(gaps), 2)
    assert m["llama_cpp_worst_accuracy"] == q8["final_answer_accuracy"]
