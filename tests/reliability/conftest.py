"""Shared pieces of the reliability suites: the project in a temporary git + DVC repo with tiny
params (synthesize talks to a fake OpenAI-compatible server), built once per session and run
once by a real `dvc repro` as the reference, and helpers to run synthesize in-process."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from smolforge.dev import sandbox
from smolforge.dev.sandbox import ran
from tests import fakeopenai
from tests.conftest import ROOT, point_chat_at

# a recognisable fake API key that the secrets test scans for; built, so that no file holds
# it literally (these tests are copied into the repo that is scanned)
KEY = "sk-smolforge-" + "5ecre7" * 4
KEY_ENV = "SMOLFORGE_RELIABILITY_KEY"
KILLHOOK = Path(__file__).parent / "killhook"  # sitecustomize.py: SIGKILL at a chosen write
# Every stage script runs in the repo: generate -> ... -> evaluate for the nets model,
# scrape -> synthesize, and the chat model up to its LoRA finetune of the tiny random base
# (its convert and evaluate run the same scripts as the nets model's; leaving them out
# keeps this suite within its time).
TARGETS = ("evaluate@nets", "convert@nets", "train@chat")
STAGES = {
    "generate",
    "scrape",
    "synthesize",
    *(f"{s}@nets" for s in ("format", "pretokenize", "train", "convert", "evaluate")),
    *(f"{s}@chat" for s in ("format", "pretokenize", "train")),
}
IGNORED = (".git", ".dvc")  # their contents are DVC's and git's business


class Repo:
    """A throwaway copy of the project; every command's output is kept in `log`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log: list[str] = []
        self.env = {
            **sandbox.env(),
            "PYTHONPATH": str(KILLHOOK),  # inert unless SMOLFORGE_KILL is set
            KEY_ENV: KEY,
        }
        self.env.pop("SMOLFORGE_KILL", None)

    def sh(self, *cmd: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        res = subprocess.run(cmd, cwd=self.path, env={**self.env, **env}, capture_output=True, text=True)
        self.log.append(res.stdout + res.stderr)
        if check:
            assert res.returncode == 0, (
                f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
            )
        return res

    def dvc(self, *args: str) -> str:
        res = self.sh("dvc", *args)
        return res.stdout + res.stderr

    def start(self, *cmd: str) -> subprocess.Popen:
        """A command in its own process group (so the test can kill it and its children)."""
        return subprocess.Popen(
            cmd, cwd=self.path, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip

    def repro(self, *flags: str) -> str:
        """`dvc repro` of the stages this suite builds."""
        return self.dvc("repro", *flags, *TARGETS)

    def lock(self) -> str:
        return (self.path / "dvc.lock").read_text()

    def files(self) -> list[str]:
        """Every file and folder of the workspace (git's and DVC's own excepted), relative, sorted."""
        out = []
        for p in self.path.rglob("*"):
            rel = p.relative_to(self.path).as_posix()
            if not rel.startswith(IGNORED):
                out.append(rel)
        return sorted(out)

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_params(self, data: dict) -> None:
        (self.path / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


class Gate:
    """Answers like the default fake server, but can hold every answer after the first `n`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hold_after: int | None = None
        self.answered = 0
        self.holding = threading.Event()  # set while an answer is held back
        self.release = threading.Event()

    def reply(self, body: dict) -> str:
        with self.lock:
            hold = self.hold_after is not None and self.answered >= self.hold_after
        if hold:
            self.holding.set()
            self.release.wait(120)
        with self.lock:
            self.answered += 1
        return fakeopenai.default_reply(body)

    def hold(self, after: int) -> None:
        with self.lock:
            self.hold_after, self.answered = after, 0
        self.holding.clear()
        self.release.clear()

    def open(self) -> None:
        with self.lock:
            self.hold_after = None
        self.release.set()


@pytest.fixture(scope="session")
def llm(tmp_path_factory):
    """(fake OpenAI-compatible server, its gate) for the whole session."""
    gate = Gate()
    with fakeopenai.serve(reply=gate.reply) as srv:
        yield srv, gate
        gate.open()


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, llm, tiny_base) -> Repo:
    """The pipeline, run once by `dvc repro`; `reference_*` record what it produced."""
    srv, _ = llm
    repo = Repo(tmp_path_factory.mktemp("reliability_repo"))
    data = yaml.safe_load((ROOT / "tests/fixtures/params.tiny.yaml").read_text())
    data["synthesize"].update(base_url=srv.base_url, api_key_env=KEY_ENV)  # the key: from KEY_ENV
    sandbox.copy_project(repo.path)
    repo.set_params(data)
    point_chat_at(repo.path / "params.yaml", tiny_base)
    repo.sh("git", "init", "-q", "-b", "main")
    repo.sh("git", "add", "-A")
    repo.sh("git", "commit", "-qm", "tiny")
    out = repo.repro()
    assert ran(out) == STAGES, out
    repo.reference_lock = repo.lock()
    repo.reference_files = repo.files()
    repo.reference_curve = (repo.path / "metrics/train/nets/plots/metrics/train_loss.tsv").read_bytes()
    repo.reference_requests = len(srv.posts())
    return repo


# ---------------------------------------------------------------- synthesize in-process

SYNTH_OUT = [
    "data/synthesize",
    ".cache/synthesize",
    "metrics/synthesize.json",
    "metrics/synthesize_timing.json",
]


def synth_argv(params) -> list[str]:
    out, cache, metrics, timing = SYNTH_OUT
    return ["--params", str(params), "--scrape", "data/scrape", "--out", out, "--cache", cache,
            "--metrics", metrics, "--timing", timing]  # fmt: skip


def set_section(path, section: str, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    data[section].update(changes)
    path.write_text(yaml.safe_dump(data))


@pytest.fixture
def synth_dir(tiny_params, tmp_path, monkeypatch):
    """A working directory with one scraped document; 2 conversations + 1 question + 1 answer."""
    scraped = tmp_path / "data/scrape"
    scraped.mkdir(parents=True)
    doc = {"id": "doc-a", "title": "Small Tools", "text": "Small tools are easy to understand."}
    (scraped / "pages.jsonl").write_text(json.dumps(doc) + "\n")
    (scraped / "meta.json").write_text(json.dumps({"format_version": 1}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(KEY_ENV, KEY)
    set_section(tiny_params, "synthesize", api_key_env=KEY_ENV, max_retries=1)
    return tmp_path
