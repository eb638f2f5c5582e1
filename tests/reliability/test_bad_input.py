"""Bad input, table-driven, for every stage: malformed params.yaml (unknown key, wrong type,
missing key, bad value), corrupted or truncated JSONL, token files, safetensors, config
sidecars and GGUF files, an unknown format_version, missing upstream outputs. Each must end
with exit status 2 and one `error:` message naming the file, what is wrong and the stage that
writes it, and leave no output (nor temp file) behind. Stages run in-process with the command
line dvc.yaml gives them, in a fresh working directory holding copies of their inputs."""

from __future__ import annotations

import importlib
import json
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from smolforge.core.cli import run
from tests.conftest import ROOT, TINY_PARAMS, point_chat_at
from tests.fixtures.chat_corpus import DOCUMENTS
from tests.test_dvc_yaml import RESOLVED as SPECS  # every stage instance as DVC resolves it

NOT_OUTPUTS = ("--cache",)  # scrape's and synthesize's caches: kept on purpose, also on failure


# ---------------------------------------------------------------- the working directory


# where a copy of each upstream output comes from: (fixture, key), or a fixed folder
UPSTREAM = {
    "data/scrape": ("scraped", None),
    "data/generate": ("tiny_run", "generate"),
    "data/format/nets": ("tiny_run", "format"),
    "data/pretokenize/nets": ("tiny_run", "tokens"),
    "models/nets/hf": ("tiny_run", "hf"),
    "data/synthesize": ("tiny_chat_run", "synthesize"),
    "data/format/chat": ("tiny_chat_run", "format"),
    "data/pretokenize/chat": ("tiny_chat_run", "tokens"),
    "models/chat/hf": ("tiny_chat_run", "hf"),
}


@pytest.fixture(scope="session")
def scraped(tmp_path_factory) -> Path:
    """A small scrape output: the chat corpus's documents."""
    folder = tmp_path_factory.mktemp("scrape") / "scrape"
    folder.mkdir()
    (folder / "pages.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCUMENTS))
    meta = {"format_version": 1, "produced_by": "scrape", "counts": {"documents": len(DOCUMENTS)}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@dataclass
class Workdir:
    path: Path
    stage: str

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_params(self, data: dict) -> None:
        (self.path / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    def argv(self) -> list[str]:
        return ["--params", "params.yaml", *shlex.split(SPECS[self.stage]["cmd"])[3:]]

    def outputs(self) -> list[str]:
        """Every path on the command line that is not an input (nor the params or a cache)."""
        argv, inputs = self.argv(), {*SPECS[self.stage]["deps"], "params.yaml"}
        options = [
            (k, v)
            for k, v in zip(argv, argv[1:])
            if k.startswith("--") and k not in ("--model", *NOT_OUTPUTS)
        ]
        return [v for _, v in options if v not in inputs]


@pytest.fixture
def workdir(request, tmp_path, monkeypatch) -> Callable[[str], Workdir]:
    """make(stage): tmp_path as the working directory, with the stage's inputs and params.

    The tiny runs are asked for only when a stage needs their outputs (they train models)."""

    def make(stage: str) -> Workdir:
        for dep in SPECS[stage]["deps"]:
            if dep in UPSTREAM:
                fixture, key = UPSTREAM[dep]
                got = request.getfixturevalue(fixture)
                shutil.copytree(got if key is None else got[key], tmp_path / dep)
            elif dep == "sites/essays":
                shutil.copytree(ROOT / dep, tmp_path / dep)
        shutil.copy(TINY_PARAMS, tmp_path / "params.yaml")
        if stage.endswith("@chat"):
            point_chat_at(tmp_path / "params.yaml", request.getfixturevalue("tiny_base"))
        monkeypatch.chdir(tmp_path)
        return Workdir(tmp_path, stage)

    return make


def node(data: dict, section: str) -> dict:
    for part in section.split("."):
        data = data[part]
    return data


def expect_refused(w: Workdir, caplog, fragments: list[str]) -> None:
    """Exit status 2, every fragment in the one error message, no output and no temp file."""
    module = importlib.import_module(f"stages.{w.stage.split('@')[0]}")
    caplog.clear()
    assert run(module.main, w.argv()) == 2
    errors = [r.getMessage() for r in caplog.records if r.getMessage().startswith("error: ")]
    assert len(errors) == 1, caplog.text
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    assert [o for o in w.outputs() if (w.path / o).exists()] == []
    assert [p for p in w.path.rglob("*") if p.name.endswith(".tmp")] == []


# ---------------------------------------------------------------- params.yaml

# per section: a key to delete and to give a wrong type, and a well-typed value its checks refuse
PARAMS = {
    "generate": ("seed", ("max_heldout_share", 1.5, "expected a share strictly between 0 and 1")),
    "scrape": ("max_pages", ("max_pages", 0, "expected a number > 0")),
    "synthesize": ("seed", ("concurrency", 0, "expected a number > 0")),
    "format.nets": ("seed", ("loss_on", "sideways", "expected one of")),
    "format.chat": ("seed", ("val_share", 1.5, "expected 0 <= val_share < 1")),
    "pretokenize.nets": ("vocab_size", ("vocab_size", 10, "expected 260..")),
    "pretokenize.chat": ("tokenizer", ("base", None, "required for tokenizer base")),
    "train.nets": ("lr", ("max_steps", 0, "expected >= 1")),
    "train.chat": ("lr", ("min_lr", 1.0, "expected 0 <= min_lr <= lr")),
    "convert.nets": ("threads", ("parity_examples", 0, "expected >= 1")),
    "convert.chat": ("threads", ("file_types", [], "expected a non-empty list")),
    "evaluate.nets": ("batch_size", ("batch_size", 0, "expected >= 1")),
    "evaluate.chat": ("batch_size", ("max_new_tokens", 0, "expected >= 1")),
}


def params_case(section: str, kind: str) -> tuple[Callable[[dict], None], str]:
    """(how to break the section, the message's fragment)."""
    key, (bad_key, bad_value, why) = PARAMS[section]
    sec = lambda data: node(data, section)  # noqa: E731
    return {
        "unknown_key": (lambda d: sec(d).update(bogus_key=1), f"{section}.bogus_key: unknown key"),
        "wrong_type": (lambda d: sec(d).update({key: [1, 2]}), f"{section}.{key}: expected"),
        "missing_key": (lambda d: sec(d).pop(key), f"{section}.{key}: missing key"),
        "bad_value": (lambda d: sec(d).update({bad_key: bad_value}), f"{section}.{bad_key}: {why}"),
    }[kind]


@pytest.mark.parametrize("kind", ["unknown_key", "wrong_type", "missing_key", "bad_value"])
@pytest.mark.parametrize("section", list(PARAMS))
def test_bad_params(section, kind, workdir, caplog):
    w = workdir(section.replace(".", "@"))
    data = w.params()
    breaker, fragment = params_case(section, kind)
    breaker(data)
    w.set_params(data)
    expect_refused(w, caplog, ["params.yaml", fragment])


def test_params_that_are_not_yaml_or_lack_the_section(workdir, caplog):
    w = workdir("train@nets")
    (w.path / "params.yaml").write_text("train:\n  nets: [unclosed\n")
    expect_refused(w, caplog, ["params.yaml: not valid YAML"])
    w.set_params({"train": {"chat": {}}})
    expect_refused(w, caplog, ["params.yaml: missing section train.nets"])


# ---------------------------------------------------------------- upstream outputs


def truncate(rel: str) -> Callable[[Path], None]:
    """Cut a file about in half, mid-record, as a crash or a full disk would."""

    def go(root: Path) -> None:
        data = (root / rel).read_bytes()
        cut = len(data) // 2
        if data[cut - 1 : cut] == b"\n":  # at a line boundary (that is drop_lines): into the line
            cut -= 2
        (root / rel).write_bytes(data[:cut])

    return go


def drop_lines(rel: str, n: int = 1) -> Callable[[Path], None]:
    """Cut whole lines off the end: still well-formed JSONL, only the count shows it."""

    def go(root: Path) -> None:
        lines = (root / rel).read_text().splitlines(keepends=True)
        (root / rel).write_text("".join(lines[:-n]))

    return go


def cut_bytes(rel: str, n: int) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[:-n])

    return go


def garbage(rel: str, data: bytes = b"\x00\x93garbage{") -> Callable[[Path], None]:
    return lambda root: (root / rel).write_bytes(data)


def version(folder: str, v: int = 99) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        meta = json.loads((root / folder / "meta.json").read_text())
        (root / folder / "meta.json").write_text(json.dumps({**meta, "format_version": v}))

    return go


def remove(rel: str) -> Callable[[Path], None]:
    return lambda root: shutil.rmtree(root / rel)


def drop_field(rel: str, field: str) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        lines = (root / rel).read_text().splitlines()
        first = json.loads(lines[0])
        del first[field]
        (root / rel).write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")

    return go


def by(stage: str) -> str:
    return f"(written by stage {stage}; run: dvc repro {stage})"


INPUTS = [
    # stage, how its input is broken, fragments of the message
    ("synthesize", truncate("data/scrape/pages.jsonl"), ["data/scrape/pages.jsonl:", "not valid JSON", by("scrape")]),
    ("synthesize", drop_lines("data/scrape/pages.jsonl"), ["data/scrape/pages.jsonl: 3 records, but data/scrape/meta.json says 4", by("scrape")]),
    ("synthesize", version("data/scrape"), ["data/scrape/meta.json: format_version 99 is not one", by("scrape")]),
    ("synthesize", remove("data/scrape"), ["data/scrape/meta.json: file not found", by("scrape")]),
    ("format@nets", truncate("data/generate/train.jsonl"), ["data/generate/train.jsonl:", "not valid JSON", by("generate")]),
    ("format@nets", drop_lines("data/generate/val.jsonl", 2), ["data/generate/val.jsonl: 28 records, but data/generate/meta.json says 30 (truncated or edited?)", by("generate")]),
    ("format@nets", drop_field("data/generate/test.jsonl", "net"), ['data/generate/test.jsonl:1: missing field "net"', by("generate")]),
    ("format@nets", version("data/generate"), ["data/generate/meta.json: format_version 99", by("generate")]),
    ("format@nets", remove("data/generate"), ["data/generate/meta.json: file not found", by("generate")]),
    ("format@chat", truncate("data/synthesize/conversations.jsonl"), ["data/synthesize/conversations.jsonl:", "not valid JSON", by("synthesize")]),
    ("format@chat", drop_lines("data/synthesize/qa.jsonl"), ["data/synthesize/qa.jsonl: 3 records, but data/synthesize/meta.json says 4", by("synthesize")]),
    ("format@chat", version("data/synthesize", 0), ["data/synthesize/meta.json: format_version 0", by("synthesize")]),
    ("format@chat", remove("data/synthesize"), ["data/synthesize/meta.json: file not found", by("synthesize")]),
    ("pretokenize@nets", truncate("data/format/nets/train.jsonl"), ["data/format/nets/train.jsonl:", "not valid JSON", by("format")]),
    ("pretokenize@nets", drop_lines("data/format/nets/val.jsonl"), ["data/format/nets/val.jsonl:", "records, but data/format/nets/meta.json says", by("format")]),
    ("pretokenize@nets", version("data/format/nets"), ["data/format/nets/meta.json: format_version 99", by("format")]),
    ("pretokenize@chat", remove("data/format/chat"), ["data/format/chat/meta.json: file not found", by("format")]),
    ("train@nets", cut_bytes("data/pretokenize/nets/train.bin", 1), ["data/pretokenize/nets/train.bin: size is not a whole number of uint16 tokens", by("pretokenize")]),
    ("train@nets", cut_bytes("data/pretokenize/nets/train.idx", 8), ["data/pretokenize/nets/train.*: token, offset and mask files disagree", by("pretokenize")]),
    ("train@nets", garbage("data/pretokenize/nets/meta.json"), ["data/pretokenize/nets/meta.json: not valid JSON", by("pretokenize")]),
    ("train@nets", remove("data/pretokenize/nets"), ["data/pretokenize/nets/meta.json: file not found", by("pretokenize")]),
    ("train@chat", version("data/pretokenize/chat", 3), ["data/pretokenize/chat/meta.json: format_version 3", by("pretokenize")]),
    ("convert@nets", truncate("models/nets/hf/model.safetensors"), ["models/nets/hf/model.safetensors", by("train")]),
    ("convert@nets", garbage("models/nets/hf/config.json"), ["models/nets/hf/config.json: not valid JSON", by("train")]),
    ("convert@nets", cut_bytes("data/pretokenize/nets/val.mask", 3), ["data/pretokenize/nets/val.*: token, offset and mask files disagree", by("pretokenize")]),
    ("convert@chat", remove("models/chat/hf"), ["models/chat/hf/config.json: file not found", by("train")]),
    ("evaluate@nets", truncate("models/nets/hf/model.safetensors"), ["models/nets/hf/model.safetensors", by("train")]),
    ("evaluate@nets", garbage("models/nets/hf/smolforge.json"), ["models/nets/hf/smolforge.json: not valid JSON", by("train")]),
    ("evaluate@nets", truncate("data/generate/ood.jsonl"), ["data/generate/ood.jsonl:", "not valid JSON", by("generate")]),
    ("evaluate@nets", drop_lines("data/generate/test.jsonl"), ["data/generate/test.jsonl: 29 records, but data/generate/meta.json says 30", by("generate")]),
    ("evaluate@nets", version("data/generate"), ["data/generate/meta.json: format_version 99", by("generate")]),
    ("evaluate@nets", remove("models/nets/hf"), ["models/nets/hf: not a trained model directory", by("train")]),
    ("evaluate@chat", garbage("models/chat/hf/model.safetensors", b""), ["models/chat/hf/model.safetensors", by("train")]),
    ("evaluate@chat", version("data/pretokenize/chat"), ["data/pretokenize/chat/meta.json: format_version 99", by("pretokenize")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("stage", "breaker", "fragments"), INPUTS, ids=[f"{s}-{f[0].split(':')[0]}" for s, _, f in INPUTS]
)
def test_bad_upstream_output(stage, breaker, fragments, workdir, caplog):
    w = workdir(stage)
    breaker(w.path)
    expect_refused(w, caplog, fragments)


# ---------------------------------------------------------------- GGUF files named in params


def broken_gguf(root: Path) -> str:
    """A GGUF file cut off after its header: what an interrupted download leaves."""
    from smolforge.llm.server import smollm2_gguf

    with open(smollm2_gguf(), "rb") as f:
        head = f.read(4096)
    (root / "broken.gguf").write_bytes(head)
    return "broken.gguf"


@pytest.mark.parametrize(
    ("stage", "keys"),
    [
        ("format@chat", ["format.chat.tokenizer"]),
        ("pretokenize@chat", ["pretokenize.chat.base"]),
    ],
)
def test_a_truncated_gguf_base(stage, keys, workdir, caplog):
    w = workdir(stage)
    data = w.params()
    name = broken_gguf(w.path)
    for key in keys:
        *section, last = key.split(".")
        node(data, ".".join(section))[last] = name
    w.set_params(data)
    expect_refused(w, caplog, ["broken.gguf"])


@pytest.mark.slow
def test_a_truncated_gguf_for_the_embedded_server(workdir, caplog):
    w = workdir("synthesize")
    data = w.params()
    data["synthesize"]["embedded"]["gguf"] = broken_gguf(w.path)
    w.set_params(data)
    expect_refused(w, caplog, ["llama.cpp server exited", "server.log"])


# ---------------------------------------------------------------- the resumable state


def test_a_corrupted_checkpoint_is_ignored_with_a_warning_and_training_starts_over(workdir, tiny_run, caplog):
    """Not an error: the state is train's own scratch space, never another stage's output."""
    w = workdir("train@nets")
    shutil.copy(tiny_run["params"], w.path / "params.yaml")
    (w.path / "models/nets/state").mkdir(parents=True)
    (w.path / "models/nets/state/ckpt.pt").write_bytes(b"PK\x03\x04 torn")
    from stages import train

    assert run(train.main, w.argv()) == 0
    assert "ignoring unreadable checkpoint models/nets/state/ckpt.pt" in caplog.text
    same = (w.path / "models/nets/hf/model.safetensors").read_bytes()
    assert same == (tiny_run["hf"] / "model.safetensors").read_bytes()  # as if no state had been there


def test_the_chat_command_refuses_a_truncated_gguf(tmp_path, caplog):
    from smolforge.chat import cli

    name = broken_gguf(tmp_path)
    assert run(cli.main, ["--model", str(tmp_path / name), "--once", "Hi"]) == 2
    assert f"{tmp_path}/broken.gguf: llama.cpp cannot load it" in caplog.text
    assert by("convert") in caplog.text
