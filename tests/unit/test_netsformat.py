"""smolforge.nets.layouts: the full and step trace shapes, and check_trace's verdicts."""

from __future__ import annotations

import dataclasses
import random

import pytest

from smolforge.core.cli import StageError
from smolforge.nets import layouts, reducer
from smolforge.nets.layouts import check_trace, examples


def reference(net: str, strategy: reducer.Strategy = "leftmost") -> list[str]:
    return layouts.full_answer(net, strategy).split("\n")


# ---- shapes


def test_full_shape_worked_example():
    assert list(layouts.examples("ADB", "full", "leftmost")) == [("A D B", "D A B =\nD")]


def test_step_shape_worked_example():
    # one example per state, including the final one that teaches the model to stop
    assert list(layouts.examples("ADB", "step", "leftmost")) == [
        ("A D B", "D A B ="),
        ("D A B", "D"),
        ("D", "D"),
    ]


def test_shapes_follow_the_strategy():
    assert layouts.full_answer("ADAB", "leftmost") == "D A A B =\nD A"
    assert layouts.full_answer("ADAB", "priority") == "A D =\nD A"
    assert layouts.step_answer("ADAB", "priority") == "A D ="


@pytest.mark.parametrize("shape", ["full", "step"])
def test_normal_net_answers_itself(shape):
    assert list(layouts.examples("BA", shape, "priority")) == [("B A", "B A")]
    assert list(layouts.examples("", shape, "priority")) == [("EMPTY", "EMPTY")]


def test_empty_answer_is_written_empty():
    assert layouts.full_answer("CDAB", "leftmost") == "A B =\nEMPTY"
    assert layouts.step_answer("AB", "leftmost") == "EMPTY"
    assert layouts.line("") == "EMPTY"
    assert layouts.line("DA") == "D A"
    assert layouts.line("AD") == "A D ="


def test_messages_shape():
    assert layouts.messages("A B", "EMPTY") == [
        {"role": "user", "content": "A B"},
        {"role": "assistant", "content": "EMPTY"},
    ]


# ---- check_trace


def verdict_tuple(v: layouts.Verdict):
    return v.answer, v.correct, v.valid, v.exact, v.failure


@pytest.mark.parametrize("strategy", ["leftmost", "priority"])
@pytest.mark.parametrize("net", ["ADB", "CAB", "ADAB", "BA", "", "AB", "CCBBAD"])
def test_reference_trace_is_correct_valid_exact(net, strategy):
    v = check_trace(net, reference(net, strategy), "full", strategy, looped=False)
    red = reducer.reduce(net)
    assert verdict_tuple(v) == (red.normal_form, True, True, True, None)
    assert v.states == reducer.trace(net, strategy)[1:] or (red.steps == 0 and v.states == [net])


def test_step_shape_outputs_check_like_full():
    # evaluate iterates the step shape: each output line is one element of `lines`
    net = "CCBBAD"
    lines = [layouts.step_answer(s, "priority") for s in reducer.trace(net, "priority")[:-1]]
    assert lines == reference(net, "priority")
    assert check_trace(net, lines, "full", "priority", looped=False).exact


def test_other_strategy_is_valid_and_correct_but_not_exact():
    net = "ADAB"
    other = reference(net, "priority")
    assert other != reference(net, "leftmost")
    v = check_trace(net, other, "full", "leftmost", looped=False)
    assert verdict_tuple(v) == ("DA", True, True, False, None)


def test_wrong_rewrite():
    # A D B -> D B skips a state (not one legal rewrite), though it lands on the right answer
    v = check_trace("ADB", ["D B =", "D"], "full", "leftmost", looped=False)
    assert verdict_tuple(v) == ("D", True, False, False, "wrong_rewrite")


def test_wrong_final_answer():
    v = check_trace("ADB", ["D A B =", "B"], "full", "leftmost", looped=False)
    assert verdict_tuple(v) == ("B", False, False, False, "wrong_rewrite")
    v = check_trace("ADB", ["EMPTY"], "full", "leftmost", looped=False)
    assert verdict_tuple(v) == ("", False, False, False, "wrong_rewrite")


def test_stopped_early():
    v = check_trace("ADB", ["D A B ="], "full", "leftmost", looped=False)
    assert verdict_tuple(v) == ("DAB", False, False, False, "stopped_early")
    v = check_trace("ADB", [], "full", "leftmost", looped=False)
    assert verdict_tuple(v) == (None, False, False, False, "stopped_early")


@pytest.mark.parametrize("bad", ["X", "", "D  A B =", "d a b", "D A B = ="])
def test_malformed(bad):
    v = check_trace("ADB", [bad, "D"], "full", "leftmost", looped=False)
    assert verdict_tuple(v) == (None, False, False, False, "malformed")
    assert check_trace("ADB", ["D A B =", bad], "full", "leftmost", looped=False).failure == "malformed"


def test_looped():
    # decoding hit the step limit: never correct, even when the lines so far are legal
    v = check_trace("ADB", ["D A B ="], "full", "leftmost", looped=True)
    assert verdict_tuple(v) == ("DAB", False, False, False, "looped")
    v = check_trace("ADB", reference("ADB"), "full", "leftmost", looped=True)
    assert verdict_tuple(v) == ("D", False, False, True, "looped")


def test_repeated_state_is_a_wrong_rewrite_not_a_loop():
    v = check_trace("ADB", ["D A B =", "D A B =", "D"], "full", "leftmost", looped=True)
    assert v.failure == "wrong_rewrite" and not v.valid


def test_empty_answer():
    assert verdict_tuple(check_trace("AB", ["EMPTY"], "full", "leftmost", False)) == (
        "",
        True,
        True,
        True,
        None,
    )
    assert verdict_tuple(check_trace("CDAB", ["A B =", "EMPTY"], "full", "priority", False)) == (
        "",
        True,
        True,
        False,  # priority rewrites the A B first
        None,
    )
    # a blank answer is not the empty net
    assert check_trace("AB", [""], "full", "leftmost", False).failure == "malformed"


def test_normal_net_identity_only_once():
    assert check_trace("BA", ["B A"], "full", "leftmost", False).valid
    v = check_trace("BA", ["B A", "B A"], "full", "leftmost", False)
    assert verdict_tuple(v) == ("BA", True, False, False, "wrong_rewrite")
    # a non-normal net cannot answer itself
    assert check_trace("AD", ["A D"], "full", "leftmost", False).failure == "wrong_rewrite"


# ---- the parallel-pass shape


def test_pass_shape_rewrites_every_redex_at_once():
    assert list(examples("ABCD", "pass", "priority")) == [("A B C D", "EMPTY"), ("EMPTY", "EMPTY")]
    assert list(examples("AADD", "pass", "leftmost")) == [
        ("A A D D", "A D A D ="),
        ("A D A D", "D A D A ="),
        ("D A D A", "D D A A"),
        ("D D A A", "D D A A"),
    ]


def test_pass_verdicts():
    ok = check_trace("AADD", ["A D A D =", "D A D A =", "D D A A"], "pass", "priority", looped=False)
    assert ok.correct and ok.valid and ok.exact and ok.failure is None
    # one redex at a time is a legal (if slower) parallel rewrite: valid, not exact
    slow = check_trace("AADD", ["A D A D =", "D A A D =", "D A D A =", "D D A A"], "pass", "priority", False)
    assert slow.correct and slow.valid and not slow.exact
    # rewriting a pair that is no redex is wrong
    bad = check_trace("AADD", ["D A D A =", "D D A A"], "pass", "priority", looped=False)
    assert bad.failure == "wrong_rewrite" and not bad.valid
    # the normal form itself, unchanged, is no rewrite at all
    same = check_trace("AADD", ["A A D D =", "D D A A"], "pass", "priority", looped=False)
    assert same.failure == "wrong_rewrite"


# ---- the pass shape's layout: blanks and frame

ALIGNED = layouts.Layout(blanks=True, frame=6)


def test_blanks_keep_annihilated_pairs_in_place_and_frame_pads_the_prompt():
    assert list(examples("ABDCB", "pass", "priority", ALIGNED)) == [
        ("A B D C B .", "_ _ D B C"),
        ("D B C . . .", "D B C"),
    ]
    # a pass that annihilates everything writes blanks too: every line as long as its
    # prompt; the empty net is one blank, in its prompt and its answer
    assert list(examples("CADB", "pass", "priority", ALIGNED)) == [
        ("C A D B . .", "C D A B ="),
        ("C D A B . .", "_ _ _ _"),
        ("_ . . . . .", "_"),
    ]
    # a net longer than the frame is written as it is
    assert layouts.prompt("BBBBBBBB", ALIGNED) == "B B B B B B B B"


@pytest.mark.parametrize("net", ["ADCB", "AADDCB", "CCDDAB", "BDAC", ""])
def test_blank_lines_stand_for_the_plain_pass(net):
    """Every blanked line reads back as the plain line's state, as long as the input."""
    plain = layouts.reference_lines(net, "pass", "priority")
    blank = layouts.reference_lines(net, "pass", "priority", ALIGNED)
    assert [layouts.read_line(b, ALIGNED) for b in blank] == [layouts.read_line(p) for p in plain]
    for state, text in zip(reducer.parallel_trace(net), blank):
        assert len(text.removesuffix(layouts.CONTINUES).split(" ")) == max(len(state), 1)


def test_prompt_reads_back_without_its_padding():
    for net in ["", "A", "ADCB", "BBBBBBBB"]:
        assert layouts.read_prompt(layouts.prompt(net, ALIGNED)) == net
    assert layouts.read_prompt("A . B") is None


def test_blank_verdicts():
    ok = check_trace("ABDCB", ["_ _ D B C"], "pass", "priority", False, ALIGNED)
    assert ok.correct and ok.valid and ok.exact
    # blanks in the wrong places stand for the same state: valid, not exact
    moved = check_trace("ABDCB", ["D _ _ B C"], "pass", "priority", False, ALIGNED)
    assert moved.valid and not moved.exact
    # a line of blanks alone is the empty net; EMPTY is read as itself
    assert check_trace("AB", ["_ _"], "pass", "priority", False, ALIGNED).exact
    assert check_trace("AB", ["EMPTY"], "pass", "priority", False, ALIGNED).valid
    assert layouts.read_line("_ _ =", ALIGNED) == "" and layouts.read_line("_ A", ALIGNED) == "A"
    # without the blanks option a blank is malformed
    assert check_trace("ABDCB", ["_ _ D B C"], "pass", "priority", False).failure == "malformed"


# ---- marks: false and pack

LOCAL = layouts.Layout(blanks=True, frame=9, marks=False, pack=True)


def test_without_marks_the_normal_net_answers_itself_and_ends_the_trace():
    unmarked = layouts.Layout(blanks=True, frame=6, marks=False)
    assert layouts.reference_lines("CADB", "pass", "priority", unmarked) == ["C D A B", "_ _ _ _", "_"]
    assert layouts.reference_lines("BA", "pass", "priority", unmarked) == ["B A"]
    ok = check_trace("ABDCB", ["_ _ D B C", "D B C"], "pass", "priority", False, unmarked)
    assert ok.correct and ok.valid and ok.exact
    # repeating a net that still has a redex is a wrong rewrite and a wrong answer
    stuck = check_trace("ADB", ["A D B"], "pass", "priority", False, unmarked)
    assert not stuck.correct and stuck.failure == "wrong_rewrite"
    # decoding goes on while a line changes something; a mark means nothing here
    assert layouts.more_follow("_ _ D B C", "ABDCB", "DBC", unmarked)
    assert not layouts.more_follow("D B C", "DBC", "DBC", unmarked)
    assert layouts.more_follow("D B C =", "DBC", "DBC", layouts.Layout(True, 6))


def test_pack_puts_states_side_by_side_and_each_is_its_own_pass():
    class Widest(random.Random):  # every line as wide as the frame
        def randint(self, a, b):
            return b

    got = list(layouts.packed(["AB", "DC", "ADC", "", "CBDA", "AAAAAAAAAA"], LOCAL, Widest()))
    assert got == [
        ("_ . . . . . . . .", "_"),  # the empty net: one blank, a line of its own
        ("A B . D C . A D C", "_ _ . D C . D A C"),  # 9 symbols: the frame is full
        ("A A A A A A A A A A", "A A A A A A A A A A"),  # longer than the frame: alone
        ("C B D A . . . . .", "B C D A"),
    ]


def test_packed_lines_take_random_widths_and_keep_every_state_in_order():
    rng = random.Random(0)
    states = [reducer.sample_net(rng, rng.randint(1, 5)) for _ in range(400)]
    lines = list(layouts.packed(states, LOCAL, random.Random(1)))
    parts = [user.rstrip(" .").split(" . ") for user, _ in lines]
    assert [reducer.parse(p) for line in parts for p in line] == states
    used = [len(user.rstrip(" .").split(" ")) for user, _ in lines]
    assert max(used) <= LOCAL.frame and min(used) < 4 and max(used) > 6  # short lines and full ones
    assert any(len(p) == 1 for p in parts) and any(len(p) > 1 for p in parts)
    for (user, answer), line in zip(lines, parts):
        assert answer == " . ".join(layouts.pass_answer(reducer.parse(p), LOCAL) for p in line)
        assert len(answer.split(" ")) == len(user.rstrip(" .").split(" "))  # symbol under symbol


def test_pack_needs_blanks_a_frame_and_no_marks():
    assert LOCAL.problems() == []
    for bad in (
        layouts.Layout(blanks=False, frame=9, marks=False, pack=True),
        layouts.Layout(blanks=True, frame=0, marks=False, pack=True),
        layouts.Layout(blanks=True, frame=9, marks=True, pack=True),
    ):
        assert bad.problems() and "pack" in bad.problems()[0]
    # a recorded layout must name every field: a forgotten one is an error, not a default
    with pytest.raises(StageError, match=r"layout\.marks: missing key"):
        layouts.Layout.read({"blanks": True, "frame": 8}, "meta.json", "format")
    full = dataclasses.asdict(layouts.Layout(True, 8))
    assert layouts.Layout.read(full, "meta.json", "format") == layouts.Layout(True, 8)


def test_a_border_starts_every_line_and_is_read_away():
    edged = layouts.Layout(blanks=True, frame=6, marks=False, pack=True, border=True)
    assert layouts.prompt("AD", edged) == ". A D . . . ."
    assert layouts.pass_answer("AD", edged) == ". D A"
    assert layouts.pass_answer("", edged) == ". _"
    assert layouts.read_prompt(". A D . . . .") == "AD" and layouts.read_prompt(". _ . .") == ""
    assert layouts.read_line(". _ _ D", edged) == "D" and layouts.read_line("_ _ D", edged) is None
    assert list(layouts.packed(["AB", "D"], edged, random.Random(0))) in (
        [(". A B . D . .", ". _ _ . D")],
        [(". A B . . . .", ". _ _"), (". D . . . . .", ". D")],
    )
    ok = check_trace("ABDCB", [". _ _ D B C", ". D B C"], "pass", "priority", False, edged)
    assert ok.correct and ok.valid and ok.exact
