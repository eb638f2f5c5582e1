"""The pass shape with blanks and a frame, through format, pretokenize, train and evaluate:
the prompts are padded in training and in evaluation alike, and blanked lines are read
back as the nets they stand for."""

from __future__ import annotations

import json

import pytest
import yaml

from smolforge import nets, netsformat
from stages import evaluate
from stages import format as format_stage
from tests.conftest import TINY_PARAMS, nets_run

FRAME = 14  # the tiny OOD nets have length 12


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("aligned")
    data = yaml.safe_load(TINY_PARAMS.read_text())
    data["format"]["nets"].update(trace="pass", blanks=True, frame=FRAME)
    (d / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return nets_run(d)


def test_training_prompts_are_framed_and_answers_blanked(aligned_run):
    heldout = {
        nets.parse(json.loads(x)["net"])
        for split in ("test", "ood", "stratified12")
        for x in (aligned_run["generate"] / f"{split}.jsonl").read_text().splitlines()
    }
    records = [json.loads(x) for x in (aligned_run["format"] / "train.jsonl").read_text().splitlines()]
    for rec in records:
        user, assistant = (m["content"] for m in rec["messages"])
        state = netsformat.read_prompt(user)
        assert state is not None and len(user.split(" ")) == max(FRAME, len(state), 1)
        assert state not in heldout  # a padded prompt is still checked against the held-out nets
        layout = netsformat.Layout(True, FRAME)
        assert assistant == netsformat.pass_answer(state, layout)
    assert any(netsformat.BLANK in json.dumps(r["messages"]) for r in records)
    sidecar = json.loads((aligned_run["hf"] / "smolforge.json").read_text())
    assert {k: sidecar["task"][k] for k in ("trace", "blanks", "frame")} == {
        "trace": "pass",
        "blanks": True,
        "frame": FRAME,
    }


def test_evaluate_frames_every_prompt_and_follows_blanked_lines(aligned_run, tmp_path, monkeypatch):
    """Stand in a perfect model for the trained one (decode answers every prompt with the
    reference pass) and record what evaluate sends it: every prompt is a framed net, each
    next prompt is the state the blanked line stands for, and every verdict is perfect."""
    from smolforge import decode, tokenizer

    tok = tokenizer.load(aligned_run["hf"])
    layout = netsformat.Layout(True, FRAME)
    sent: list[str] = []

    def perfect(model, prompts, budgets, *args, **kw):
        out = []
        for ids, budget in zip(prompts, budgets):
            user = tok.decode(ids, skip_special_tokens=True).split("\n")[
                0
            ]  # plain style: user turn + newline
            sent.append(user)
            answer = tok(
                netsformat.pass_answer(netsformat.read_prompt(user), layout), add_special_tokens=False
            )
            assert len(answer["input_ids"]) <= budget
            out.append((answer["input_ids"], True))
        return out

    monkeypatch.setattr(decode, "greedy", perfect)
    mine = tmp_path / "mine.jsonl"
    batch = ["ADCB", "ABD", "CCDD", "AADDCBCB", ""]
    mine.write_text("".join(json.dumps({"net": nets.to_text(n)}) + "\n" for n in batch))
    out = tmp_path / "out"
    evaluate.main(
        [
            "--params", str(aligned_run["params"]), "--model", "nets", "--hf", str(aligned_run["hf"]),
            "--in", str(mine), "--metrics", str(out / "m.json"), "--plot", str(out / "p.csv"),
            "--out", str(out / "preds"),
        ]
    )  # fmt: skip
    assert sent[: len(batch)] == [netsformat.prompt(n, layout) for n in batch]
    expected = {netsformat.prompt(s, layout) for n in batch for s in nets.parallel_trace(n)[1:-1]}
    assert set(sent[len(batch) :]) == expected  # the states the blanked lines stand for, framed
    m = json.loads((out / "m.json").read_text())
    assert m["final_answer_accuracy"] == m["valid_trace_rate"] == m["exact_trace_accuracy"] == 1.0


def test_other_shapes_ignore_the_layout_so_switching_trace_is_one_param():
    p = format_stage.NetsFormatParams("nets", "step", "priority", True, FRAME, "plain", "assistant", 1)
    assert p.check() == [] and p.layout == netsformat.PLAIN
    assert format_stage.NetsFormatParams(
        "nets", "pass", "priority", True, -1, "plain", "assistant", 1
    ).check()
