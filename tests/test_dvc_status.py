"""An edit to one package reruns exactly the stages that import it: `dvc status` on the real dvc.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dvc.repo import Repo

from smolforge.dev.sandbox import new_repo, sh

NETS = {"generate", "format@nets", "evaluate@nets"}
PER_MODEL = ("format", "pretokenize", "train", "convert", "evaluate")
EVERY = {"generate", "scrape", "synthesize", "report"} | {
    f"{s}@{m}" for s in PER_MODEL for m in ("nets", "chat")
}
# one file of each package -> the stages whose code changes with it
EXPECTED = {
    "smolforge/core/io.py": EVERY,
    "smolforge/nets/reducer.py": NETS,
    "smolforge/chat/corpus.py": {"format@chat", "evaluate@chat"},
    "smolforge/web/crawl.py": {"scrape"},
    "smolforge/llm/server.py": {"synthesize"},
    "smolforge/gguf/export.py": {"convert@nets", "convert@chat"},
    "smolforge/inits/scratch.py": {"train@nets"},
    "smolforge/inits/lora.py": {"train@chat"},
    "smolforge/report/card.py": {"report"},
    "smolforge/dev/sandbox.py": set(),
}


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """The project in a new repo whose dvc.lock records every stage as built (placeholder
    outputs, `dvc commit`), so `dvc status` shows only what an edit changes."""
    repo = new_repo(tmp_path_factory.mktemp("status"))
    with Repo(str(repo)) as dvc_repo:
        outs = [o.def_path for stage in dvc_repo.index.stages for o in stage.outs]
    for out in outs:
        path = repo / out
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("placeholder\n")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "placeholder").write_text("placeholder\n")
    sh(repo, "dvc", "commit", "--force")
    assert status(repo) == set()
    return repo


def status(repo: Path) -> set[str]:
    """The stages `dvc status` lists as changed."""
    return set(json.loads(sh(repo, "dvc", "status", "--json") or "{}"))


@pytest.mark.parametrize("file", list(EXPECTED))
def test_an_edit_reruns_only_the_stages_that_import_it(committed, file):
    path = committed / file
    original = path.read_bytes()
    path.write_bytes(original + b"# an edit\n")
    try:
        assert status(committed) == EXPECTED[file]
    finally:
        path.write_bytes(original)
    assert status(committed) == set()
