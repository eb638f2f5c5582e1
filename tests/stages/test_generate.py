"""Stage generate: splits on disk, determinism, and bad params."""

from __future__ import annotations

import json

from smolforge.core.cli import run
from smolforge.nets import reducer
from stages import generate
from tests.conftest import listing


def argv(params, out, metrics):
    return ["--params", str(params), "--out", str(out), "--metrics", str(metrics)]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writes_disjoint_splits_with_exact_answers(tiny_params, tmp_path):
    out = tmp_path / "gen"
    generate.main(argv(tiny_params, out, tmp_path / "m.json"))
    files = {"train", "val", "test", "ood", "stratified12", "swaps"}
    assert {p.stem for p in out.glob("*.jsonl")} == files
    seen: dict[str, str] = {}
    for split in files:
        for rec in read(out / f"{split}.jsonl"):
            net = reducer.parse(rec["net"])
            red = reducer.reduce(net)
            assert rec["answer"] == reducer.to_text(red.normal_form) and rec["steps"] == red.steps
            if split != "train":
                assert net not in seen, f"{rec['net']} in {split} and {seen.get(net)}"
            seen.setdefault(net, split)
    train = {reducer.parse(r["net"]) for r in read(out / "train.jsonl")}
    assert not train & {n for n, s in seen.items() if s != "train"}
    strat = read(out / "stratified12.jsonl")
    assert sorted(r["steps"] for r in strat) == list(range(7))
    assert all(r["length"] == 6 for r in strat)
    assert {r["length"] for r in read(out / "ood.jsonl")} == {12}
    assert [r["net"] for r in read(out / "swaps.jsonl")] == ["A A A A A D D D D D", "C C C C C B B B B B"]
    assert [r["steps"] for r in read(out / "swaps.jsonl")] == [25, 25]  # k^2: every A passes every D
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"] == json.loads((tmp_path / "m.json").read_text())["counts"]
    assert meta["counts"]["train"] == 300


def test_same_params_same_bytes(tiny_params, tmp_path):
    generate.main(argv(tiny_params, tmp_path / "a", tmp_path / "a.json"))
    generate.main(argv(tiny_params, tmp_path / "b", tmp_path / "b.json"))
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()


def test_bad_params_report_every_problem_and_write_nothing(tiny_params, tmp_path, caplog):
    text = (
        tiny_params.read_text()
        .replace("n_train: 300", "n_trian: 300")
        .replace("seed: 7\n  train", "seed: x\n  train")
    )
    tiny_params.write_text(text)
    out = tmp_path / "out"
    assert run(generate.main, argv(tiny_params, out, tmp_path / "m.json")) == 2
    msg = caplog.text
    assert "generate.n_trian: unknown key (did you mean n_train?)" in msg
    assert "generate.n_train: missing key" in msg
    assert "generate.seed: expected int, got 'x'" in msg
    assert listing(tmp_path) == ["params.yaml"]
