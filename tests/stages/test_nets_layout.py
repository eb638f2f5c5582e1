"""The pass shape with blanks and a frame, through format, pretokenize, train and evaluate:
the prompts are padded in training and in evaluation alike, and blanked lines are read
back as the nets they stand for; without marks decoding stops at the line that changes
nothing, and packed training lines hold several nets, none of them held out."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from smolforge.core.card import read_card
from smolforge.nets import layouts, reducer
from stages import evaluate
from tests.conftest import TINY_PARAMS, nets_run

FRAME = 14  # the tiny OOD nets have length 12
ALIGNED = layouts.Layout(True, FRAME)
LOCAL = layouts.Layout(True, FRAME, marks=False, pack=True, border=True)
INTERLEAVED = dataclasses.replace(LOCAL, interleave=True, spread=80)


def layout_run(d, layout: layouts.Layout) -> dict:
    data = yaml.safe_load(TINY_PARAMS.read_text())
    data["format"]["nets"]["layout"] = dataclasses.asdict(layout)  # every field, from the one definition
    (d / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return {**nets_run(d), "layout": layout}


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory) -> dict:
    return layout_run(tmp_path_factory.mktemp("aligned"), ALIGNED)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> dict:
    return layout_run(tmp_path_factory.mktemp("local"), LOCAL)


@pytest.fixture(scope="module")
def interleaved_run(tmp_path_factory) -> dict:
    return layout_run(tmp_path_factory.mktemp("interleaved"), INTERLEAVED)


def heldout_nets(run: dict) -> set[str]:
    return {
        reducer.parse(json.loads(x)["net"])
        for split in ("test", "ood", "stratified12")
        for x in (run["generate"] / f"{split}.jsonl").read_text().splitlines()
    }


def test_training_prompts_are_framed_and_answers_blanked(aligned_run):
    heldout = heldout_nets(aligned_run)
    records = [json.loads(x) for x in (aligned_run["format"] / "train.jsonl").read_text().splitlines()]
    for rec in records:
        user, assistant = (m["content"] for m in rec["messages"])
        state = layouts.read_prompt(user)
        assert state is not None and len(user.split(" ")) == max(FRAME, len(state), 1)
        assert state not in heldout  # a padded prompt is still checked against the held-out nets
        layout = layouts.Layout(True, FRAME)
        assert assistant == layouts.pass_answer(state, layout)
    assert any(layouts.BLANK in json.dumps(r["messages"]) for r in records)
    layout = read_card(aligned_run["hf"]).task.layout
    assert {k: layout[k] for k in ("trace", "blanks", "frame")} == {
        "trace": "pass",
        "blanks": True,
        "frame": FRAME,
    }


def test_packed_lines_hold_training_nets_side_by_side_without_marks(local_run):
    heldout, seen = heldout_nets(local_run), set()
    records = [json.loads(x) for x in (local_run["format"] / "train.jsonl").read_text().splitlines()]
    for rec in records:
        user, assistant = (m["content"] for m in rec["messages"])
        assert len(user.split(" ")) == FRAME + 1 and layouts.CONTINUES not in assistant
        assert user.startswith(". ") and assistant.startswith(". ")  # the border
        user, assistant = user[2:], assistant[2:]
        if layouts.read_prompt(user) == "":  # the empty net, a line of its own
            assert assistant == layouts.BLANK
            continue
        parts = [reducer.parse(p) for p in user.rstrip(" .").split(" . ")]
        assert all(p and p not in heldout for p in parts)  # every net in a line is checked
        assert assistant == " . ".join(layouts.pass_body(p, LOCAL) for p in parts)
        seen.update(parts)
    assert max(len(r["messages"][0]["content"].rstrip(" .").split(" . ")) for r in records) > 1
    train_nets = {
        reducer.parse(json.loads(x)["net"])
        for x in (local_run["generate"] / "train.jsonl").read_text().splitlines()
    }
    assert train_nets - heldout <= seen  # no training net is lost by packing
    card = read_card(local_run["hf"])
    assert layouts.Layout.read(card.task.layout, "card", "train") == LOCAL


@pytest.mark.parametrize("run_name", ["aligned_run", "local_run"])
def test_evaluate_frames_every_prompt_and_follows_blanked_lines(run_name, request, tmp_path, monkeypatch):
    """Stand in a perfect model for the trained one (decode answers every prompt with the
    reference pass) and record what evaluate sends it: every prompt is a framed net, each
    next prompt is the state the blanked line stands for, and every verdict is perfect."""
    from smolforge.core import decode, tokenizer

    aligned_run = request.getfixturevalue(run_name)
    tok = tokenizer.load(aligned_run["hf"])
    layout = aligned_run["layout"]
    sent: list[str] = []

    def perfect(model, prompts, budgets, *args, **kw):
        out = []
        for ids, budget in zip(prompts, budgets):
            user = tok.decode(ids, skip_special_tokens=True).split("\n")[
                0
            ]  # plain style: user turn + newline
            sent.append(user)
            answer = tok(layouts.pass_answer(layouts.read_prompt(user), layout), add_special_tokens=False)
            assert len(answer["input_ids"]) <= budget
            out.append((answer["input_ids"], True))
        return out

    monkeypatch.setattr(decode, "greedy", perfect)
    mine = tmp_path / "mine.jsonl"
    batch = ["ADCB", "ABD", "CCDD", "AADDCBCB", ""]
    mine.write_text("".join(json.dumps({"net": reducer.to_text(n)}) + "\n" for n in batch))
    out = tmp_path / "out"
    evaluate.main(
        [
            "--params", str(aligned_run["params"]), "--model", "nets", "--hf", str(aligned_run["hf"]),
            "--in", str(mine), "--live", str(out / "live"),
            "--out", str(out / "preds"),
        ]
    )  # fmt: skip
    assert sent[: len(batch)] == [layouts.prompt(n, layout) for n in batch]
    # the states the blanked lines stand for, framed; without marks the normal net too
    last = -1 if layout.marks else None
    expected = {layouts.prompt(s, layout) for n in batch for s in reducer.parallel_trace(n)[1:last]}
    assert set(sent[len(batch) :]) == expected
    m = json.loads((out / "live/metrics.json").read_text())
    assert m["final_answer_accuracy"] == m["valid_trace_rate"] == m["exact_trace_accuracy"] == 1.0


def test_other_shapes_ignore_the_layout_so_switching_trace_is_one_param():
    step = dataclasses.replace(LOCAL, trace="step")
    assert step.check() == [] and step.effective() == layouts.Layout(trace="step", strategy="priority")
    assert LOCAL.effective() == LOCAL
    assert dataclasses.replace(ALIGNED, frame=-1).check()
    assert dataclasses.replace(LOCAL, marks=True).check()  # pack with marks: one mark for several nets



def test_interleaved_lines_are_unpadded_and_their_jumps_stored_as_position_ids(interleaved_run):
    """Format writes unpadded packed lines, interleaved, with their jumps; pretokenize
    stores a token per segment and each token's id with the jumps."""
    from smolforge.core import positions, styles
    from smolforge.core.io import read_meta
    from smolforge.core.tokens import read_split

    records = [json.loads(x) for x in (interleaved_run["format"] / "train.jsonl").read_text().splitlines()]
    assert not any(r["messages"][0]["content"].endswith(" .") for r in records)  # no frame padding
    assert any(r.get("position_jumps") for r in records)
    meta = read_meta(interleaved_run["tokens"], "pretokenize", versions=(2,))
    split = read_split(interleaved_run["tokens"], "train", meta)
    assert split.positions is not None and len(split) == len(records)
    for i, rec in enumerate(records):
        user, answer = (m["content"] for m in rec["messages"])
        segs = [tuple(s) for s in rec["segments"]]
        assert segs == layouts.interleaved_segments(user, answer, styles.BOS, styles.EOS)
        toks, mask = split.example(i)
        assert len(toks) == len(segs) and mask.tolist() == [int(m) for _, m in segs]  # a token a segment
        ids = split.example_positions(i).tolist()
        assert ids == positions.with_jumps([1] * len(segs), rec.get("position_jumps"))
        assert ids == sorted(ids) and ids[-1] <= INTERLEAVED.spread
    assert layouts.Layout.read(read_card(interleaved_run["hf"]).task.layout, "card", "train") == INTERLEAVED


def test_evaluate_feeds_interleaved_inputs_and_reads_answers(interleaved_run, tmp_path, monkeypatch):
    """A perfect stand-in for the interleaved decoder checks what evaluate feeds it (the
    input symbols, a token each) and answers each with the reference pass."""
    from smolforge.core import decode, tokenizer

    tok = tokenizer.load(interleaved_run["hf"])

    def perfect(model, inputs, bos, end, eos, batch_size):
        assert (bos, eos) == (tok.bos_token_id, tok.eos_token_id) and tok.decode([end]) == "\n"
        out = []
        for ids in inputs:
            user = "".join(tok.decode([i]) for i in ids)
            answer = layouts.pass_answer(layouts.read_prompt(user), INTERLEAVED)
            out.append(([tok(f" {w}", add_special_tokens=False)["input_ids"][0] for w in answer.split(" ")], True))
        return out

    monkeypatch.setattr(decode, "greedy_interleaved", perfect)
    mine = tmp_path / "mine.jsonl"
    long_net = "A " * 12 + "D " * 12  # longer than any training line (the frame is 14), fits the context of 64
    mine.write_text(json.dumps({"net": long_net.strip()}) + "\n" + json.dumps({"net": "A# #B B# #A"}) + "\n")
    out = tmp_path / "out"
    evaluate.main(
        [
            "--params", str(interleaved_run["params"]), "--model", "nets", "--hf", str(interleaved_run["hf"]),
            "--in", str(mine), "--live", str(out / "live"), "--out", str(out / "preds"),
        ]
    )  # fmt: skip
    m = json.loads((out / "live/metrics.json").read_text())
    assert m["final_answer_accuracy"] == m["valid_trace_rate"] == m["exact_trace_accuracy"] == 1.0
    preds = [json.loads(x) for x in (out / "preds/predictions.jsonl").read_text().splitlines()]
    assert preds[1]["net"] == "A# #B B# #A"  # A D C B -> D A B C -> D C, in its own notation
    assert preds[1]["answer"] == "#B B#" and all("#" in line for line in preds[1]["output"])


def test_users_nets_file_errors_name_the_user_not_a_stage(interleaved_run, tmp_path, caplog):
    from smolforge.core.cli import run

    def attempt(text: str) -> int:
        mine = tmp_path / "mine.jsonl"
        mine.write_text(text)
        argv = [
            "--params", str(interleaved_run["params"]), "--model", "nets", "--hf", str(interleaved_run["hf"]),
            "--in", str(mine), "--live", str(tmp_path / "live"), "--out", str(tmp_path / "preds"),
        ]  # fmt: skip
        return run(evaluate.main, argv)

    assert attempt("") == 2 and "no nets in this file" in caplog.text
    assert attempt('{"net": "A B"}\n{"net": 3\n') == 2
    assert "mine.jsonl:2: not valid JSON" in caplog.text and "written by stage" not in caplog.text
    n_ctx = json.loads((interleaved_run["hf"] / "config.json").read_text())["max_position_embeddings"]
    longest = layouts.longest_fitting(INTERLEAVED, n_ctx)
    too_long = " ".join("A" * (longest + 1))
    assert attempt(json.dumps({"net": "A D"}) + "\n" + json.dumps({"net": too_long}) + "\n") == 2
    assert f"mine.jsonl:2: a net of {longest + 1} symbols needs" in caplog.text
    assert f"the longest that fits is {longest} symbols" in caplog.text
    assert not (tmp_path / "preds").exists()
