"""Every documented recipe (smolforge/core/recipes.py, docs/chat.md#recipes) run as its users
run it: `dvc exp run -S ...` with exactly its set, on a finished default chat track, by real
DVC in a sandbox. Tiny fixtures stand in for the real material: the fixture corpus as
scrape's and synthesize's outputs (recorded with `dvc commit`), a tiny random base, a few
training steps; every chat stage from format to evaluate runs for real."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from smolforge.core.card import read_card
from smolforge.core.cli import run
from smolforge.core.params import read_yaml
from smolforge.core.recipes import RECIPES
from smolforge.dev.sandbox import new_repo, ran, sh
from stages import check
from tests.conftest import TINY_PARAMS
from tests.fixtures.chat_corpus import DOCUMENTS, write_synthesize_dir, write_tiny_base

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHAT = {"format@chat", "pretokenize@chat", "train@chat", "convert@chat", "evaluate@chat"}
TARGETS = ("evaluate@chat", "convert@chat")  # the chat track; the nets track is another test's
# the tiny counterpart of params.yaml's train.chat.model, read by init: scratch only
TINY_MODEL = dict(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len="auto", rope_theta=1e4)


def tiny_params(base: Path) -> dict:
    """The tiny params with params.yaml's chat defaults for what the recipes switch (a scratch
    shape, a vocabulary size and an encoding that stay unread until a recipe needs them,
    num_ctx auto), finetuning the tiny base."""
    data = read_yaml(TINY_PARAMS)
    data["format"]["chat"]["tokenizer"] = str(base)
    data["pretokenize"]["chat"].update(base=str(base), vocab_size=320, encoding="cl100k_base")
    data["train"]["chat"].update(base=str(base), model=TINY_MODEL)
    data["convert"]["chat"]["modelfile"]["num_ctx"] = "auto"
    return data


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A sandbox whose default chat track is built and committed (the finished pipeline)."""
    d = tmp_path_factory.mktemp("recipes")
    repo = new_repo(d / "repo", tiny_params(write_tiny_base(d / "base")))
    # scrape and synthesize as if they had run: the fixture corpus, recorded in dvc.lock
    write_synthesize_dir(repo / "data/synthesize")
    (repo / "data/scrape").mkdir(parents=True)
    (repo / "data/scrape/pages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DOCUMENTS))
    (repo / "data/scrape/meta.json").write_text(json.dumps({"format_version": 1, "produced_by": "scrape"}))
    (repo / "metrics").mkdir(exist_ok=True)
    for name in ("scrape", "synthesize"):
        (repo / f"metrics/{name}.json").write_text("{}")
    sh(repo, "dvc", "commit", "--force", "scrape", "synthesize")
    assert ran(sh(repo, "dvc", "repro", *TARGETS)) == CHAT
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "the finished default chat track")
    return repo


def switched(overrides: tuple[str, ...], key: str, default: str) -> str:
    """The value a recipe's set gives `key`, or the default's."""
    values = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key]
    return values[-1] if values else default


def test_the_default_recipe_is_the_finished_pipeline(repo):
    assert RECIPES["default"].overrides == ()
    assert run(check.main, ["--params", str(repo / "params.yaml"), "--recipe", "default"]) == 0
    assert ran(sh(repo, "dvc", "exp", "run", *TARGETS)) == set()  # nothing to redo
    card = read_card(repo / "models/chat/hf")
    assert (card.task.chat_style, card.init, card.tokenizer) == ("template", "lora", "base")


# a set that changes synthesize asks the LLM again: tests/stages/test_check.py checks those
@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if n != "default" and not r.synthesizes])
def test_each_recipe_runs_from_its_set_on_the_first_try(repo, name):
    overrides = RECIPES[name].overrides
    sets = [arg for o in overrides for arg in ("-S", o)]
    try:
        # what a user may run first: it passes (in-process: a subprocess would add the imports)
        assert run(check.main, ["--params", str(repo / "params.yaml"), *sets]) == 0
        out = sh(repo, "dvc", "exp", "run", *sets, *TARGETS)  # raises with DVC's output on failure
        assert ran(out) == CHAT, out
        hf = repo / "models/chat/hf"
        card = read_card(hf)
        assert card.task.chat_style == switched(overrides, "format.chat.chat_style", "template")
        assert card.init == switched(overrides, "train.chat.init", "lora")
        assert card.tokenizer == switched(overrides, "pretokenize.chat.tokenizer", "base")
        meta = json.loads((repo / "data/pretokenize/chat/meta.json").read_text())
        if card.init == "scratch":
            # the context came from the data: the longest example, validation included
            longest = max(meta["counts"][s]["max_example_tokens"] for s in ("train", "val"))
            config = json.loads((hf / "config.json").read_text())
            assert config["max_position_embeddings"] == longest
            assert "base" not in meta  # the base left in pretokenize.chat was not used
            assert f"PARAMETER num_ctx {longest}" in (repo / "models/chat/gguf/Modelfile").read_text()
        ev = json.loads((repo / "metrics/evaluate/chat/metrics.json").read_text())
        assert math.isfinite(ev["val_loss"]) and ev["val_targets"] > 0
        assert sorted(p.name for p in (repo / "models/chat/gguf").glob("*.gguf")) == [
            "model-f16.gguf",
            "model-q8_0.gguf",
        ]
    finally:  # back to the finished default pipeline for the next recipe
        sh(repo, "git", "reset", "-q", "--hard")
        sh(repo, "dvc", "checkout", "--force", "--with-deps", *TARGETS)
