"""Stage evaluate: metric names, verdicts from the reducer, user-supplied nets files."""

from __future__ import annotations

import json

from smolforge.core.cli import run
from smolforge.nets import reducer
from stages import evaluate


def argv(run_paths, src, out):
    return [
        "--params",
        str(run_paths["params"]),
        "--model",
        "nets",
        "--hf",
        str(run_paths["hf"]),
        "--in",
        str(src),
        "--live",
        str(out / "live"),
        "--out",
        str(out / "preds"),
    ]


HEADLINE = [
    "exact_trace_accuracy",
    "failed",
    "final_answer_accuracy",
    "ood_final_answer_accuracy",
    "ood_worst_length_accuracy",
    "stratified12_solved",
    "swaps_solved",
    "valid_trace_rate",
]


def test_headline_metrics_have_the_documented_names_and_details_go_apart(tiny_run, tmp_path):
    evaluate.main(argv(tiny_run, tiny_run["generate"], tmp_path))
    m = json.loads((tmp_path / "live/metrics.json").read_text())
    assert sorted(m) == HEADLINE  # flat figures (10 with llama.cpp's): what dvc exp show and metrics diff compare
    details = json.loads((tmp_path / "preds/details.json").read_text())
    assert details["stratified12"]["n"] == 7 and details["ood"]["n"] == 10 and details["test"]["n"] == 30
    assert set(details["ood_by_length"]) == {"12"} and details["swaps"]["n"] == 2
    assert m["ood_worst_length_accuracy"] == details["ood_by_length"]["12"]["final_answer_accuracy"]
    assert sum(v["n"] for v in details["test_by_length"].values()) == 30
    assert sorted(details["failures"]) == ["looped", "malformed", "stopped_early", "wrong_rewrite"]
    assert sum(details["failures"].values()) == m["failed"]
    preds = [json.loads(x) for x in (tmp_path / "preds/predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 30 + 10 + 7 + 2
    for p in preds:  # the verdict is the reducer's, whatever the model wrote
        assert p["answer"] == reducer.to_text(reducer.reduce(reducer.parse(p["net"])).normal_form)
        last = p["output"][-1].removesuffix(" =") if p["output"] else None
        assert p["correct"] == (last == p["answer"] and p["failure"] != "looped")
    # the figures are the predictions' verdicts, counted
    test = [p for p in preds if p["set"] == "test"]
    for key, field in (
        ("final_answer_accuracy", "correct"),
        ("valid_trace_rate", "valid"),
        ("exact_trace_accuracy", "exact"),
    ):
        assert m[key] == round(sum(p[field] for p in test) / len(test), 4), key
    ood = [p for p in preds if p["set"] == "ood"]
    assert m["ood_final_answer_accuracy"] == round(sum(p["correct"] for p in ood) / len(ood), 4)
    for name in ("stratified12", "swaps"):
        chosen = [p for p in preds if p["set"] == name]
        assert m[f"{name}_solved"] == sum(p["correct"] and p["valid"] for p in chosen)
    # the by-length table, for dvc plots: dvclive's custom plot, a JSON list of rows
    table = json.loads((tmp_path / "live/plots/custom/accuracy_by_length.json").read_text())
    assert {(r["set"], r["length"]) for r in table} == {
        ("test", int(n)) for n in details["test_by_length"]
    } | {("ood", 12)}
    assert sorted(p.name for p in (tmp_path / "live").iterdir()) == ["metrics.json", "plots"]


def test_accepts_a_users_nets_file(tiny_run, tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"net": "A B"}\n{"id": "x", "net": "C A B"}\n{"net": "EMPTY"}\n')
    evaluate.main(argv(tiny_run, mine, tmp_path))
    m = json.loads((tmp_path / "live/metrics.json").read_text())
    assert sorted(m) == ["exact_trace_accuracy", "failed", "final_answer_accuracy", "valid_trace_rate"]
    details = json.loads((tmp_path / "preds/details.json").read_text())
    assert details["test"]["n"] == 3
    assert set(details["test_by_length"]) == {"0", "2", "3"} and "ood" not in details


def test_bad_net_in_users_file_names_the_line(tiny_run, tmp_path, caplog):
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"net": "A B"}\n{"net": "A Q"}\n')
    out = tmp_path / "out"
    assert run(evaluate.main, argv(tiny_run, mine, out)) == 2
    assert f"{mine}:2: field \"net\": 'A Q' is not a net" in caplog.text
    assert not out.exists()
