"""Shared fixtures (the tiny params file, a tiny pipeline run in a temp folder) and the
fast-loop switch: plain `pytest` runs the unit and stage tests; `pytest --all` adds the
slow suites (tests/e2e, tests/reliability, and every test marked `slow`), as CI does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_PARAMS = ROOT / "tests" / "fixtures" / "params.tiny.yaml"
SLOW_SUITES = ("e2e", "reliability")  # folders under tests/ whose every test is slow


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--all",
        action="store_true",
        help="also run the slow suites: e2e, reliability, the real SmolLM2 base, DDP (what CI runs)",
    )


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the slow suites' tests `slow`; without --all, leave every slow test out."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts[0] in SLOW_SUITES:
            item.add_marker(pytest.mark.slow)
    if config.getoption("--all"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture
def tiny_params(tmp_path: Path) -> Path:
    """A private copy of the tiny params file (tests may edit it)."""
    dst = tmp_path / "params.yaml"
    shutil.copy(TINY_PARAMS, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict[str, Path]:
    """generate -> format -> pretokenize -> train on the tiny params, run once per session."""
    d = tmp_path_factory.mktemp("tiny_run")
    shutil.copy(TINY_PARAMS, d / "params.yaml")
    return nets_run(d)


def nets_run(d: Path) -> dict[str, Path]:
    """generate -> format -> pretokenize -> train for the nets model, in folder `d` with
    the params in `d/params.yaml`; the paths of every output."""
    from stages import format as format_stage
    from stages import generate, pretokenize, train

    params = d / "params.yaml"
    paths = {
        "dir": d,
        "params": params,
        "generate": d / "data/generate",
        "format": d / "data/format/nets",
        "tokens": d / "data/pretokenize/nets",
        "hf": d / "models/nets/hf",
        "state": d / "models/nets/state",
    }
    m = d / "metrics"
    generate.main(
        ["--params", str(params), "--out", str(paths["generate"]), "--metrics", str(m / "generate.json")]
    )
    format_stage.main(
        [
            "--params",
            str(params),
            "--model",
            "nets",
            "--in",
            str(paths["generate"]),
            "--out",
            str(paths["format"]),
            "--metrics",
            str(m / "format.json"),
        ]
    )
    pretokenize.main(
        [
            "--params",
            str(params),
            "--model",
            "nets",
            "--in",
            str(paths["format"]),
            "--out",
            str(paths["tokens"]),
            "--metrics",
            str(m / "pretokenize.json"),
        ]
    )
    train.main(train_argv(params, paths, m))
    return paths


def train_argv(params: Path, paths: dict, m: Path) -> list[str]:
    """The train stage's command line for a tiny-run layout."""
    return [
        "--params",
        str(params),
        "--model",
        "nets",
        "--tokens",
        str(paths["tokens"]),
        "--out",
        str(paths["hf"]),
        "--state",
        str(paths["state"]),
        "--live",
        str(m / "train"),
        "--timing",
        str(m / "train_timing.json"),
    ]


def listing(folder: Path) -> list[str]:
    """Every path under `folder`, relative, sorted (to assert nothing was written)."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A random 2-layer Llama with its own tokenizer and chat template, saved as an HF dir."""
    from tests.fixtures.chat_corpus import write_tiny_base

    return write_tiny_base(tmp_path_factory.mktemp("tiny_base") / "base")


def point_chat_at(params: Path, base: Path) -> None:
    """Make the chat model of a params file finetune `base` (and tokenize with it)."""
    import yaml

    data = yaml.safe_load(params.read_text())
    data["format"]["chat"]["tokenizer"] = str(base)
    data["pretokenize"]["chat"]["base"] = str(base)
    data["train"]["chat"]["base"] = str(base)
    params.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="session")
def tiny_chat_run(tmp_path_factory, tiny_base) -> dict[str, Path]:
    """format -> pretokenize -> train (LoRA on the tiny base) for the chat model, once."""
    from stages import format as format_stage
    from stages import pretokenize, train
    from tests.fixtures.chat_corpus import write_synthesize_dir

    d = tmp_path_factory.mktemp("tiny_chat_run")
    params = d / "params.yaml"
    shutil.copy(TINY_PARAMS, params)
    point_chat_at(params, tiny_base)
    m = d / "metrics"
    paths = {
        "dir": d,
        "params": params,
        "base": tiny_base,
        "synthesize": write_synthesize_dir(d / "data/synthesize"),
        "format": d / "data/format/chat",
        "tokens": d / "data/pretokenize/chat",
        "hf": d / "models/chat/hf",
        "state": d / "models/chat/state",
        "metrics": m,
    }
    io = ["--params", str(params), "--model", "chat"]
    format_stage.main(
        [
            *io,
            "--in",
            str(paths["synthesize"]),
            "--out",
            str(paths["format"]),
            "--metrics",
            str(m / "format.json"),
        ]
    )
    pretokenize.main(
        [
            *io,
            "--in",
            str(paths["format"]),
            "--out",
            str(paths["tokens"]),
            "--metrics",
            str(m / "pretokenize.json"),
        ]
    )
    train.main(chat_train_argv(params, paths, m))
    return paths


def chat_train_argv(params: Path, paths: dict, m: Path) -> list[str]:
    argv = train_argv(params, paths, m)
    argv[argv.index("nets")] = "chat"
    return argv
