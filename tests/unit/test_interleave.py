"""The interleaved nets layout (smolforge.nets.layouts), its position jumps
(smolforge.core.positions), interleaved decoding, and the A::B notation of users' files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from smolforge.core import positions
from smolforge.core.data import collate
from smolforge.core.decode import greedy_interleaved
from smolforge.core.model import LlamaShape, build, llama_config, to_hf
from smolforge.core.tokens import TokenSplit
from smolforge.nets import layouts, notation, reducer
from smolforge.nets.format import spread_jumps

INTERLEAVED = layouts.Layout(
    blanks=True, frame=48, marks=False, pack=True, border=True, trace="pass", interleave=True
)


def test_each_answer_symbol_follows_the_last_input_it_depends_on():
    user, answer = ". A B D", ". _ _ D"
    segs = layouts.interleaved_segments(user, answer, "<s>", "</s>")
    assert segs == [
        ("<s>", False), (".", False),
        (" A", False), (" .", True),  # p_1, then a_0 (the border)
        (" B", False), (" _", True),
        (" D", False), (" _", True),
        ("\n", False), (" D", True),  # END closes the input; a_n follows it
        ("</s>", True),
    ]  # fmt: skip
    # the token before a_j is p_{j+1}; p_j and p_{j-1} sit 2 and 4 tokens before it
    texts = [t for t, _ in segs]
    for j, a in enumerate(answer.split(" ")):
        k = texts.index(f" {a}", 3 + 2 * j - 1) if j else 3
        assert k == 3 + 2 * j and texts[k - 1].strip() == (user.split(" ") + ["\n"])[j + 1].strip()


def test_interleaved_prompts_are_never_padded_and_the_layout_checks_its_needs():
    assert layouts.prompt("AD", INTERLEAVED) == ". A D"
    assert layouts.packed_line(["AB", "D"], 4, INTERLEAVED) == (". A B . D", ". _ _ . D")
    assert INTERLEAVED.check() == []
    assert layouts.Layout(trace="pass", interleave=True).check()  # needs blanks, border, no marks
    assert layouts.Layout(spread=100).check()  # spread only spreads interleaved packed lines
    # other shapes ignore the pass options: switching trace stays one param
    assert layouts.Layout(trace="full", interleave=True, spread=100).check() == []


def test_jumps_move_every_id_from_their_segment_on_and_keep_ids_increasing():
    assert positions.with_jumps([1, 2, 1, 3], None) == [0, 1, 2, 3, 4, 5, 6]
    assert positions.with_jumps([1, 2, 1, 3], [[2, 10], [3, 1]]) == [0, 1, 2, 13, 15, 16, 17]


def test_spread_jumps_start_nets_and_stay_within_the_spread():
    rng = random.Random(0)
    user = ". A B . D . C C . B"
    answer = layouts.pass_answer(layouts.read_prompt(user) or "", INTERLEAVED)  # shape only
    starts = {2 * 4, 2 * 6, 2 * 9}  # segment of p_i for the symbol after each separator
    for _ in range(200):
        jumps = spread_jumps(user, 120, rng)
        assert {s for s, _ in jumps} <= starts and all(j > 0 for _, j in jumps)
        segs = layouts.interleaved_segments(user, ". _ _ . D . C C . B", "<s>", "</s>")
        ids = positions.with_jumps([1] * len(segs), jumps)
        assert ids == sorted(ids) and ids[-1] <= 120
    assert answer and spread_jumps(". A B", 120, rng) == []  # one net: nothing to spread


def test_collate_pads_stored_positions_with_zero():
    toks = np.arange(8, dtype=np.uint16)
    pos = np.array([0, 1, 2, 0, 5, 6, 7, 9], np.uint16)
    split = TokenSplit(toks, np.array([0, 3, 8]), np.ones(8, np.uint8), None, pos)
    assert collate(split, [0, 1], pad_id=99).position_ids.tolist() == [[0, 1, 2, 0, 0], [0, 5, 6, 7, 9]]
    plain = TokenSplit(toks, np.array([0, 3, 8]), np.ones(8, np.uint8))
    assert collate(plain, [0, 1], 99).position_ids is None


def test_context_needed_counts_prompt_and_answer():
    sequential = layouts.Layout(blanks=True, frame=48, marks=False, pack=True, border=True)
    assert layouts.context_needed(10, sequential) == 1 + 49 + 1 + 11 + 1
    assert layouts.context_needed(100, sequential) == 1 + 101 + 1 + 101 + 1
    assert layouts.context_needed(100, INTERLEAVED) == 1 + 1 + 2 * 101 + 1
    assert layouts.longest_fitting(INTERLEAVED, 256) == 125
    assert layouts.context_needed(layouts.longest_fitting(sequential, 256) + 1, sequential) > 256


@pytest.mark.parametrize("buffers", [True, False])
def test_interleaved_decoding_equals_a_full_forward_over_the_same_sequence(buffers, monkeypatch):
    """Batched, cached decoding of rows of different lengths gives each row the tokens a
    plain forward over its own whole interleaved sequence would choose, with the
    preallocated cache (a Llama) and with transformers' own (any other model)."""
    from smolforge.core import decode

    if not buffers:
        monkeypatch.setattr(decode, "llama_stepper", lambda *a: None)
    torch.manual_seed(0)
    model = to_hf(build(llama_config(LlamaShape(32, 2, 2, 2, 64, 128, 10000.0), 12, 9, 10, 11), 0)).eval()
    END = 8
    rng = random.Random(1)
    inputs = [[rng.randrange(8) for _ in range(rng.randint(2, 12))] for _ in range(7)]
    got = greedy_interleaved(model, inputs, bos_id=9, end_id=END, eos_id=10, batch_size=3)
    for p, (answer, ended) in zip(inputs, got):
        src, seq, want = p + [END], [9, p[0], p[1]], []
        while True:
            with torch.no_grad():
                t = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            if len(want) == len(src) - 1:
                assert ended == (t == 10)
                break
            if t in (10, END):
                assert ended
                break
            want.append(t)
            seq += [t] + ([src[len(want) + 1]] if len(want) + 1 < len(src) else [])
        assert answer == want


def test_ab_notation_round_trips_and_keeps_the_rules():
    assert notation.detect("A# #B") == "ab" and notation.detect("A D") == "abcd"
    assert notation.to_abcd("A# #A B# #B") == "A B C D"
    assert notation.to_abcd("A# #C") is None
    net = reducer.parse(notation.to_abcd("A# #B"))  # A# #B -> #B A# is A D -> D A
    assert notation.write(reducer.to_text(reducer.reduce(net).normal_form), "ab") == "#B A#"
    assert notation.write(". _ _ D A", "ab") == ". _ _ #B A#"
