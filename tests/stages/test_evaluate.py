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
        "--metrics",
        str(out / "m.json"),
        "--plot",
        str(out / "by_length.csv"),
        "--out",
        str(out / "preds"),
    ]


def test_metrics_have_the_documented_names(tiny_run, tmp_path):
    evaluate.main(argv(tiny_run, tiny_run["generate"], tmp_path))
    m = json.loads((tmp_path / "m.json").read_text())
    assert set(m["ood"]) == {"12"} and set(m["ood"]["12"]) >= {"final_answer_accuracy", "valid_trace_rate"}
    assert m["stratified12_n"] == 7
    assert sum(v["n"] for v in m["by_length"].values()) == m["n"] == 30
    assert set(m["failures"]) >= {"malformed", "wrong_rewrite", "stopped_early", "looped"}
    preds = [json.loads(x) for x in (tmp_path / "preds/predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 30 + 10 + 7
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
    strat = [p for p in preds if p["set"] == "stratified12"]
    assert m["stratified12_solved"] == sum(p["correct"] and p["valid"] for p in strat)
    header = (tmp_path / "by_length.csv").read_text().splitlines()[0]
    assert header == "set,length,final_answer_accuracy,valid_trace_rate,exact_trace_accuracy,n"


def test_accepts_a_users_nets_file(tiny_run, tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"net": "A B"}\n{"id": "x", "net": "C A B"}\n{"net": "EMPTY"}\n')
    evaluate.main(argv(tiny_run, mine, tmp_path))
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n"] == 3 and set(m["by_length"]) == {"0", "2", "3"}
    assert "ood" not in m and "stratified12_solved" not in m


def test_bad_net_in_users_file_names_the_line(tiny_run, tmp_path, caplog):
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"net": "A B"}\n{"net": "A Q"}\n')
    out = tmp_path / "out"
    assert run(evaluate.main, argv(tiny_run, mine, out)) == 2
    assert f"{mine}:2: field \"net\": 'A Q' is not a net" in caplog.text
    assert not out.exists()
