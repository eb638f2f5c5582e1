"""Crashes: every stage is killed with SIGKILL in the middle of its work (under a real
`dvc repro`), then `dvc repro` is run again; it must complete, reproduce the uninterrupted
run's dvc.lock byte for byte and leave no partial or temporary file. Training resumes from its
checkpoint; synthesis resumes without asking the server again for what it already answered.
(All eight stage scripts; which stages the repo builds: see tests/reliability/conftest.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import ROOT
from tests.reliability.conftest import Repo, ran

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# (stage, when, path pattern, n): SIGKILL just before / after the stage's n-th os.replace onto
# a path containing the pattern (tests/reliability/killhook). Listed downstream first, so each
# killed stage still finds its inputs.
MID_WORK = [
    ("evaluate@nets", "before", "metrics/evaluate/nets", 1),  # details written, metrics not
    ("convert@nets", "before", "model-q8_0.gguf", 1),  # f32 exported, q8_0 not
    ("train@nets", "after", "ckpt.pt", 1),  # the first checkpoint (step 4 of 12) has landed
    ("train@chat", "after", "ckpt.pt", 1),  # LoRA: step 2 of 4
    ("pretokenize@nets", "before", "train.mask", 1),
    ("format@nets", "before", "val.jsonl", 1),
    ("format@chat", "before", "val.jsonl", 1),
    ("synthesize", "before", "documents.jsonl", 1),
    ("scrape", "before", ".json", 5),  # mid-crawl, its HTTP cache emptied first
    ("generate", "before", "ood.jsonl", 1),
]
LATE = [  # the output folder is complete but not yet in place, or in place and the metrics not
    ("evaluate@nets", "before", "data/evaluate/nets", 1),
    ("train@nets", "before", "metrics/train/nets", 2),  # the HF model is in place, the live folder not final
    ("pretokenize@nets", "after", "data/pretokenize/nets", 1),
    ("format@nets", "before", "metrics/format/nets.json", 1),
    ("synthesize", "after", "data/synthesize", 1),
    ("scrape", "before", "data/scrape", 1),
    ("generate", "before", "metrics/generate.json", 1),
]


def kill(repo: Repo, stage: str, when: str, pattern: str, n: int) -> str:
    """Force `stage` to run under dvc, dying at the given write; returns its output."""
    res = repo.sh(
        "dvc", "repro", "-f", "-s", stage, check=False, SMOLFORGE_KILL=f"{stage} {when} {pattern} {n}"
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "killhook: SIGKILL" in out, f"{stage} was not killed:\n{out}"
    return out


def leftovers(repo: Repo) -> list[str]:
    """Temp files and folders anywhere in the workspace."""
    return [f for f in repo.files() if f.endswith(".tmp") or ".old." in f or "/.tmp" in f]


def assert_as_uninterrupted(repo: Repo) -> None:
    now, then = (yaml.safe_load(lock)["stages"] for lock in (repo.lock(), repo.reference_lock))
    assert [stage for stage in then if now.get(stage) != then[stage]] == []  # which, if any, differ
    assert repo.lock() == repo.reference_lock  # every output and metric, byte for byte (md5)
    assert leftovers(repo) == []
    assert repo.files() == repo.reference_files  # nothing missing, nothing extra


def rerun(repo: Repo, killed: list[str]) -> str:
    """`dvc repro` as after a crash in a stage's first run with its inputs.

    DVC restores a stage that ran before with the same inputs (here: in the reference run)
    from its cache instead of running it ("Stage ... is cached - skipping run"): a fine
    recovery, but not the stage's own, which is what is tested. So DVC's cache first forgets
    the killed stages' outputs, as if they had never been made.
    """
    lock = yaml.safe_load(repo.lock())["stages"]
    for stage in killed:
        for out in lock[stage].get("outs", []):
            md5 = out.get("md5", "")
            (repo.path / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).unlink(missing_ok=True)
    return repo.repro()


def fresh_start(repo: Repo, stage: str) -> None:
    """Make the killed run do real work: no checkpoint to finish from, no cached pages."""
    if stage.startswith("train@"):
        shutil.rmtree(repo.path / f"models/{stage.split('@')[1]}/state", ignore_errors=True)
    if stage == "scrape":
        shutil.rmtree(repo.path / ".cache/scrape", ignore_errors=True)


def test_every_stage_killed_mid_work_then_repro_completes_as_if_uninterrupted(pipeline):
    for stage, when, pattern, n in MID_WORK:
        fresh_start(pipeline, stage)
        kill(pipeline, stage, when, pattern, n)
    assert leftovers(pipeline)  # the kills did leave temp files behind ...
    out = rerun(pipeline, [stage for stage, *_ in MID_WORK])
    assert ran(out) == {stage for stage, *_ in MID_WORK}
    assert_as_uninterrupted(pipeline)  # ... which the rerun swept away
    # training resumed from its checkpoint, and its loss curve carries on the same
    assert "resumed from models/nets/state/ckpt.pt at step 4" in out
    assert "resumed from models/chat/state/ckpt.pt at step 2" in out
    curve = (pipeline.path / "metrics/train/nets/plots/metrics/train_loss.tsv").read_bytes()
    assert curve == pipeline.reference_curve
    assert [row.split(b"\t")[0] for row in curve.splitlines()[1:]] == [b"3", b"6", b"9", b"12"]


def test_every_stage_killed_as_it_finishes_then_repro_completes_as_if_uninterrupted(pipeline):
    for stage, when, pattern, n in LATE:
        kill(pipeline, stage, when, pattern, n)
    out = rerun(pipeline, [stage for stage, *_ in LATE])
    assert ran(out) == {stage for stage, *_ in LATE}  # outputs equal: nothing downstream reruns
    assert_as_uninterrupted(pipeline)
    assert "resumed from models/nets/state/ckpt.pt at step 12" in out


def lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_synthesis_killed_while_waiting_for_an_answer_asks_only_for_the_rest(pipeline, llm):
    srv, gate = llm
    cache = pipeline.path / ".cache/synthesize/requests.jsonl"
    cache.unlink()
    gate.hold(after=2)  # the third request gets no answer until the test says so
    proc = pipeline.start("dvc", "repro", "-f", "-s", "synthesize")
    try:
        deadline = time.monotonic() + 120
        while not (gate.holding.is_set() and lines(cache) == 2):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage with it, like a power cut
        proc.wait()
    finally:
        gate.open()
    asked_before = [p.body for p in srv.posts()]
    assert ran(rerun(pipeline, ["synthesize"])) == {"synthesize"}
    asked_again = [p.body for p in srv.posts()[len(asked_before) :]]
    total = json.loads((pipeline.path / "metrics/synthesize.json").read_text())["requests"]["total"]
    assert total == 4 and len(asked_again) == total - 2  # the held one, and the one after it
    assert not any(a in asked_before[-3:-1] for a in asked_again)  # the two answered are not asked again
    assert_as_uninterrupted(pipeline)


def test_a_killed_synthesis_takes_its_embedded_llm_server_with_it(tiny_params, tmp_path):
    """The embedded llama.cpp server is a child process: SIGKILL gives the stage no chance to
    stop it, so Linux must (PR_SET_PDEATHSIG), or every crash would leak a server."""
    import psutil

    (tmp_path / "data/scrape").mkdir(parents=True)
    (tmp_path / "data/scrape/pages.jsonl").write_text('{"id": "a", "title": "T", "text": "Tools."}\n')
    (tmp_path / "data/scrape/meta.json").write_text('{"format_version": 1}')
    argv = ["--params", str(tiny_params), "--scrape", "data/scrape", "--out", "out", "--cache", "cache"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.synthesize", *argv, "--metrics", "m.json", "--timing", "t.json"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline, servers = time.monotonic() + 60, []
        while not servers:
            assert time.monotonic() < deadline and proc.poll() is None
            servers = [c for c in psutil.Process(proc.pid).children() if "llama_cpp.server" in c.cmdline()]
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        gone, alive = psutil.wait_procs(servers, timeout=20)
    finally:
        proc.kill()
    assert alive == [] and len(gone) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()
