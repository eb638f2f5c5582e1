"""The real pipeline: `dvc repro` on the tiny params in a temporary git repository."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest

from smolforge.dev.sandbox import ROOT, new_repo, ran, sh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PER_MODEL = ("format", "pretokenize", "train", "convert", "evaluate")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The project's source files (not its results) in a new git repo, with tiny params."""
    return new_repo(tmp_path_factory.mktemp("repo"), ROOT / "tests/fixtures/params.tiny.yaml")


def test_repro_builds_everything_then_reruns_nothing_then_only_what_a_param_touches(repo):
    first = sh(repo, "dvc", "repro")
    assert ran(first) == {
        "generate",
        "scrape",
        "synthesize",
        *(f"{stage}@{model}" for stage in PER_MODEL for model in ("nets", "chat")),
        "report",
    }
    report = (repo / "REPORT.md").read_text()
    assert "final_answer_accuracy" in report and sorted(p.name for p in (repo / "report").glob("*.png"))

    scraped = json.loads((repo / "metrics/scrape.json").read_text())
    assert scraped["documents"] == 12 and sum(scraped["failed"].values()) == 0  # the shipped site, offline
    assert (repo / ".cache/scrape").is_dir()  # the HTTP cache, kept for the next run

    # the real embedded llama.cpp server, offline: 2 conversations, 1 question request, and
    # an answer request for the question if the model wrote a usable one
    synth = json.loads((repo / "metrics/synthesize.json").read_text())
    assert synth["requests"]["total"] == 3 + synth["qa"]["questions"]["kept"] <= 4
    assert sum(synth["requests"]["failed"].values()) == 0
    assert synth["conversations"]["in"] == 2 and synth["tokens"]["out"] > 0
    assert (repo / ".cache/synthesize/requests.jsonl").is_file()  # the request cache, kept
    for name in ("conversations.jsonl", "qa.jsonl", "meta.json"):
        assert (repo / "data/synthesize" / name).is_file()

    ev = json.loads((repo / "metrics/evaluate/nets/metrics.json").read_text())
    details = json.loads((repo / "data/evaluate/nets/details.json").read_text())
    assert [details[s]["n"] for s in ("test", "stratified12", "ood", "swaps")] == [30, 7, 10, 2]
    assert details["test"]["final_answer_accuracy"] == ev["final_answer_accuracy"]
    # the q8_0 GGUF decoded in llama.cpp too, 20 nets a set, beside HF on the same nets
    assert details["llama_cpp"]["q8_0"]["n"] == 20 + 7 + 10 + 2
    assert {"llama_cpp_worst_accuracy", "llama_cpp_max_gap_points"} <= set(ev) and len(ev) == 10
    assert set(details["ood_by_length"]) == {"12"}
    assert sum(m["n"] for m in details["test_by_length"].values()) == 30
    conv = json.loads((repo / "metrics/convert/nets.json").read_text())
    assert set(conv) >= {"f32", "q8_0"}
    assert conv["f32"]["top1_agreement"] == 1.0
    assert (repo / "models/nets/gguf/model-q8_0.gguf").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(repo / "models/nets/hf"))

    # the chat model: a LoRA finetune of the real embedded SmolLM2, converted and evaluated
    chat_ev = json.loads((repo / "metrics/evaluate/chat/metrics.json").read_text())
    chat_details = json.loads((repo / "data/evaluate/chat/details.json").read_text())
    assert chat_ev["val_targets"] > 0 and chat_details["prompts"] == 2
    assert chat_ev["val_loss"] < chat_ev["base_val_loss"]  # even 4 small steps lower it
    chat_conv = json.loads((repo / "metrics/convert/chat.json").read_text())
    assert chat_conv["f16"]["top1_agreement"] >= 0.95
    assert (repo / "models/chat/gguf/Modelfile").is_file()
    assert "| GGUF in llama.cpp | ended |" in (repo / "data/evaluate/chat/answers.md").read_text()
    assert 0 <= chat_ev["gguf_stopped_share"] <= 1 and chat_details["gguf_file"] == "model-q8_0.gguf"

    second = sh(repo, "dvc", "repro")
    assert ran(second) == set() and "up to date" in second

    # every stage is deterministic: forcing a full rerun reproduces dvc.lock exactly
    lock = (repo / "dvc.lock").read_text()
    forced = sh(repo, "dvc", "repro", "-f")
    assert len(ran(forced)) == len(ran(first))
    again = (repo / "dvc.lock").read_text()
    changed = [ln for ln in difflib.unified_diff(lock.splitlines(), again.splitlines(), lineterm="", n=12)]
    assert again == lock, "dvc repro -f changed dvc.lock:\n" + "\n".join(changed)

    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny run")
    exp = sh(repo, "dvc", "exp", "run", "-S", "train.nets.lr=2e-3")
    assert ran(exp) == {"train@nets", "convert@nets", "evaluate@nets", "report"}
