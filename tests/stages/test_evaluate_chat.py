"""Stage evaluate for a chat model with its GGUF folder: the fixed prompts answered in
llama.cpp's chat completion too, and the share that ended by themselves."""

from __future__ import annotations

import json

import pytest

from smolforge.gguf import export
from stages import evaluate


def test_gguf_answers_and_their_endings_are_reported(tiny_chat_run, tmp_path):
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    export.write_gguf(export.load_source(tiny_chat_run["hf"]), gguf / "model-f32.gguf", "f32")
    out = tmp_path / "out"
    evaluate.main(
        [
            "--params", str(tiny_chat_run["params"]), "--model", "chat", "--hf", str(tiny_chat_run["hf"]),
            "--in", str(tiny_chat_run["tokens"]), "--gguf", str(gguf),
            "--live", str(out / "live"), "--out", str(out / "eval"),
        ]
    )  # fmt: skip
    answers = [json.loads(x) for x in (out / "eval/answers.jsonl").read_text().splitlines()]
    assert answers and all(a["gguf_finish_reason"] in ("stop", "length") for a in answers)
    stopped = sum(a["gguf_finish_reason"] == "stop" for a in answers) / len(answers)
    details = json.loads((out / "eval/details.json").read_text())
    assert details["gguf_file"] == "model-f32.gguf" and details["gguf_stopped_share"] == round(stopped, 4)
    metrics = json.loads((out / "live/metrics.json").read_text())
    # ten headline figures at most, and each source's loss and bits per byte, base and finetune
    assert metrics["gguf_stopped_share"] == round(stopped, 4) and len(metrics) - 1 <= 10
    for src, row in details["per_source"].items():
        want = {k: row[k] for k in ("val_loss", "val_bpb", "base_val_loss", "base_val_bpb") if k in row}
        assert metrics["per_source"][src] == pytest.approx(want, abs=1e-4)  # rounded as the others
    table = (out / "eval/answers.md").read_text()
    assert "| prompt | finetune | base | GGUF in llama.cpp | ended |" in table
