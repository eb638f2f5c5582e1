"""Coupled positions (smolforge.core.positions), the nets layout that uses them, and the
A::B notation of users' nets files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from smolforge.core import positions
from smolforge.core.cli import StageError
from smolforge.core.data import collate
from smolforge.core.tokens import TokenSplit
from smolforge.nets import layouts, notation, reducer
from smolforge.nets.format import spread_jumps

COUPLED = layouts.Layout(
    blanks=True, frame=48, marks=False, pack=True, border=True, trace="pass", positions="coupled"
)


def test_answer_symbols_share_their_prompt_symbols_ids():
    ids = positions.example_ids(4)  # BOS p0..p3 SEP a0..a3 EOS
    assert len(ids) == 2 * 4 + 3
    bos, prompt, sep, answer, eos = ids[0], ids[1:5], ids[5], ids[6:10], ids[10]
    assert bos == 0 and prompt == [1, 2, 3, 4] and sep == 5  # SEP in the slot right of p3
    assert answer == [q + positions.COUPLE for q in prompt] and eos == answer[-1] + 1
    # evaluation decodes the same ids: the prompt's, then answer_id(t) for new token t
    assert positions.prompt_ids(4) == ids[:6]
    assert [positions.answer_id(t) for t in range(4)] == answer


def test_the_inputs_of_each_answer_symbol_sit_at_the_same_relative_ids_at_any_length():
    for n in (3, 21, 100):
        ids = positions.example_ids(n)
        prompt, answer = ids[1 : n + 1], ids[n + 2 : 2 * n + 2]
        for i in range(n - 2):  # a_i predicts a_{i+1}, written from p_i, p_{i+1}, p_{i+2}
            assert [answer[i] - prompt[i + k] for k in range(3)] == [
                positions.COUPLE - k for k in range(3)
            ]


def test_jumps_move_every_id_from_their_symbol_on_in_prompt_and_answer():
    plain, jumped = positions.example_ids(6), positions.example_ids(6, {3: 10})
    assert jumped[1:4] == plain[1:4] and jumped[4:8] == [q + 10 for q in plain[4:8]]
    assert jumped[8:14] == [q + positions.COUPLE for q in jumped[1:7]]


def test_an_example_that_does_not_tokenize_a_symbol_a_token_is_refused():
    assert positions.for_example(11, 4, [[2, 5]], "f:1") == positions.example_ids(4, {2: 5})
    with pytest.raises(StageError, match=r"f:3: coupled positions need .* 5 prompt symbols took 11 tokens"):
        positions.for_example(11, 5, None, "f:3")


def test_coupled_prompts_are_never_padded_and_the_layout_checks_its_needs():
    assert layouts.prompt("AD", COUPLED) == ". A D"
    user, answer = layouts.packed_line(["AB", "D"], 4, COUPLED)
    assert (user, answer) == (". A B . D", ". _ _ . D")
    assert COUPLED.check() == []
    assert layouts.Layout(trace="pass", positions="coupled").check()  # needs blanks, border, no marks
    assert layouts.Layout(spread=100).check()  # spread only spreads coupled packed lines


def test_spread_jumps_land_after_separators_within_the_spread():
    rng = random.Random(0)
    user = ". A B . D . C C . B"
    starts = {4, 6, 9}  # the symbol after each separator (the border at 0 is not one)
    for _ in range(200):
        jumps = spread_jumps(user, 120, rng)
        assert {i for i, _ in jumps} <= starts and all(j > 0 for _, j in jumps)
        last = positions.prompt_ids(10, dict(map(tuple, jumps)))[-2]
        assert last <= 120
    assert spread_jumps(". A B", 120, rng) == []  # one net: nothing to spread


def test_collate_pads_stored_positions_with_zero():
    toks = np.arange(8, dtype=np.uint16)
    split = TokenSplit(toks, np.array([0, 3, 8]), np.ones(8, np.uint8), None, np.array([0, 1, 2, 0, 5, 6, 7, 9], np.uint16))
    b = collate(split, [0, 1], pad_id=99)
    assert b.position_ids.tolist() == [[0, 1, 2, 0, 0], [0, 5, 6, 7, 9]]
    assert collate(TokenSplit(toks, np.array([0, 3, 8]), np.ones(8, np.uint8)), [0, 1], 99).position_ids is None


def test_context_needed_counts_prompt_and_answer_or_only_the_prompt_when_coupled():
    sequential = layouts.Layout(blanks=True, frame=48, marks=False, pack=True, border=True)
    assert layouts.context_needed(10, sequential) == 1 + 49 + 1 + 11 + 1
    assert layouts.context_needed(100, sequential) == 1 + 101 + 1 + 101 + 1
    assert layouts.context_needed(100, COUPLED) == 103
    assert layouts.longest_fitting(COUPLED, 256) == 253
    assert layouts.context_needed(layouts.longest_fitting(sequential, 256) + 1, sequential) > 256


def test_ab_notation_round_trips_and_keeps_the_rules():
    assert notation.detect("A# #B") == "ab" and notation.detect("A D") == "abcd"
    assert notation.to_abcd("A# #A B# #B") == "A B C D"
    assert notation.to_abcd("A# #C") is None
    # A# #B -> #B A# is A D -> D A
    net = reducer.parse(notation.to_abcd("A# #B"))
    assert notation.write(reducer.to_text(reducer.reduce(net).normal_form), "ab") == "#B A#"
    assert notation.write(". _ _ D A", "ab") == ". _ _ #B A#"


def test_greedy_positioned_matches_a_full_forward_with_the_same_ids():
    from smolforge.core.decode import greedy_positioned
    from smolforge.core.model import LlamaShape, build, llama_config

    model = build(llama_config(LlamaShape(32, 1, 2, 2, 64, 64, 10000.0), 12, 9, 10, 11), 0).eval()
    prompt = [9, 1, 2, 3, 4]
    ids = [0, 1, 2, 3, 4]
    (new, _), = greedy_positioned(model, [prompt], [ids], 3, [4], pad_id=11, eos_id=10, batch_size=1)
    # re-derive token by token without a cache: the same ids give the same argmax
    seq, pos = list(prompt), list(ids)
    for t in range(len(new)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq]), position_ids=torch.tensor([pos])).logits[0, -1]
        assert int(logits.argmax()) == new[t]
        seq.append(new[t])
        pos.append(3 + t)
