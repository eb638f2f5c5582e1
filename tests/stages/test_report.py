"""Stage report: REPORT.md and PNG plots from every model's files; provenance; bad input."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from smolforge.core.cli import run
from smolforge.report import gather
from stages import evaluate, report
from tests.conftest import listing


@pytest.fixture(scope="module")
def reported(tiny_run, tmp_path_factory):
    """The tiny nets run evaluated, then reported, in a git repo whose committed
    params.yaml differs from the run's in one param."""
    d = tmp_path_factory.mktemp("report")
    shutil.copytree(tiny_run["dir"] / "metrics/train", d / "metrics/train/nets")
    shutil.copy(tiny_run["dir"] / "metrics/train_timing.json", d / "metrics/train/nets_timing.json")
    params = d / "params.yaml"
    text = tiny_run["params"].read_text()
    params.write_text(text)
    for cmd in (
        ["init", "-q"],
        ["add", "params.yaml"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"],
    ):
        subprocess.run(["git", *cmd], cwd=d, check=True)
    params.write_text(text.replace("sample_answers: 1", "sample_answers: 2"))
    evaluate.main(
        [
            "--params",
            str(params),
            "--model",
            "nets",
            "--hf",
            str(tiny_run["hf"]),
            "--in",
            str(tiny_run["generate"]),
        ]
        + ["--live", str(d / "metrics/evaluate/nets"), "--out", str(d / "data/evaluate/nets")]
    )
    return d


def report_argv(d) -> list[str]:
    return [
        "--params",
        str(d / "params.yaml"),
        "--metrics",
        str(d / "metrics"),
        "--evaluated",
        str(d / "data/evaluate"),
    ] + [
        "--out",
        str(d / "REPORT.md"),
        "--plots",
        str(d / "report"),
    ]


def test_report_card_quotes_every_file_it_read(reported, monkeypatch):
    monkeypatch.chdir(reported)
    report.main(report_argv(reported))
    text = (reported / "REPORT.md").read_text()
    m = json.loads((reported / "metrics/evaluate/nets/metrics.json").read_text())
    assert f"| final_answer_accuracy | {m['final_answer_accuracy']:.4f}".rstrip("0").rstrip(".") in text
    assert f"(`{reported}/metrics/train/nets/metrics.json`)" in text
    assert "*test by length*" in text and "*ood by length*" in text
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=reported, capture_output=True, text=True
    )
    assert f"| commit | {commit.stdout.strip()} |" in text and "| dirty | yes |" in text  # params.yaml edited
    assert "| report.sample_answers | 1 | 2 |" in text  # the one param changed since the commit
    assert "| train@nets |" in text  # per-stage time from the timing file
    pngs = sorted(p.name for p in (reported / "report").iterdir())
    assert pngs == ["nets_accuracy_by_length.png", "nets_loss.png"]
    for name in pngs:
        assert (reported / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}](report/{name})" in text


def test_the_same_files_give_the_same_report(reported, monkeypatch):
    monkeypatch.chdir(reported)
    report.main(report_argv(reported))
    first = (reported / "REPORT.md").read_bytes(), (reported / "report/nets_loss.png").read_bytes()
    report.main(report_argv(reported))
    assert ((reported / "REPORT.md").read_bytes(), (reported / "report/nets_loss.png").read_bytes()) == first


def test_a_malformed_metrics_file_names_its_stage_and_nothing_is_written(reported, tmp_path, caplog):
    d = tmp_path / "copy"
    shutil.copytree(reported / "metrics", d / "metrics")
    shutil.copytree(reported / "data", d / "data")
    shutil.copy(reported / "params.yaml", d / "params.yaml")
    (d / "metrics/evaluate/nets/metrics.json").write_text('{"n": 3,\n oops}')
    before = listing(d)
    assert run(report.main, report_argv(d)) == 2
    assert f"{d}/metrics/evaluate/nets/metrics.json:2: not valid JSON" in caplog.text
    assert "(written by stage evaluate@nets; run: dvc repro evaluate@nets)" in caplog.text
    assert listing(d) == before


def test_timings_name_the_stage_of_each_timing_file(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train/chat_timing.json").write_text('{"wall_s": 89.5, "threads": 2}')
    (tmp_path / "scrape_timing.json").write_text('{"elapsed_s": 14.168}')
    assert gather.timings(tmp_path) == {"scrape": 14.2, "train@chat": 89.5}


def test_llama_cpp_accuracy_is_tabulated_beside_hf_by_set_and_length():
    from smolforge.report.card import llama_cpp_section

    gguf = {
        "q8_0": {
            "n": 3,
            "final_answer_accuracy": 0.6667,
            "ood_by_length": {
                "100": {"n": 1, "final_answer_accuracy": 0.0, "hf_final_answer_accuracy": 1.0},
                "64": {"n": 2, "final_answer_accuracy": 1.0, "hf_final_answer_accuracy": 1.0},
            },
        }
    }
    lines = llama_cpp_section(gguf, "d/details.json")
    assert lines[0].startswith("**Accuracy in llama.cpp beside HF")
    assert lines[4:6] == ["| q8_0 | ood | 64 | 2 | 1 | 1 |", "| q8_0 | ood | 100 | 1 | 0 | 1 |"]
