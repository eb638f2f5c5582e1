"""smolforge.netsformat: the full and step trace shapes, and check_trace's verdicts."""

from __future__ import annotations

import random

import pytest

from smolforge import nets, netsformat
from smolforge.netsformat import check_trace, examples


def reference(net: str, strategy: nets.Strategy = "leftmost") -> list[str]:
    return netsformat.full_answer(net, strategy).split("\n")


# ---- shapes


def test_full_shape_worked_example():
    assert list(netsformat.examples("ADB", "full", "leftmost")) == [("A D B", "D A B =\nD")]


def test_step_shape_worked_example():
    # one example per state, including the final one that teaches the model to stop
    assert list(netsformat.examples("ADB", "step", "leftmost")) == [
        ("A D B", "D A B ="),
        ("D A B", "D"),
        ("D", "D"),
    ]


def test_shapes_follow_the_strategy():
    assert netsformat.full_answer("ADAB", "leftmost") == "D A A B =\nD A"
    assert netsformat.full_answer("ADAB", "priority") == "A D =\nD A"
    assert netsformat.step_answer("ADAB", "priority") == "A D ="


@pytest.mark.parametrize("shape", ["full", "step"])
def test_normal_net_answers_itself(shape):
    assert list(netsformat.examples("BA", shape, "priority")) == [("B A", "B A")]
    assert list(netsformat.examples("", shape, "priority")) == [("EMPTY", "EMPTY")]


def test_empty_answer_is_written_empty():
    assert netsformat.full_answer("CDAB", "leftmost") == "A B =\nEMPTY"
    assert netsformat.step_answer("AB", "leftmost") == "EMPTY"
    assert netsformat.line("") == "EMPTY"
    assert netsformat.line("DA") == "D A"
    assert netsformat.line("AD") == "A D ="


def test_messages_shape():
    assert netsformat.messages("A B", "EMPTY") == [
        {"role": "user", "content": "A B"},
        {"role": "assistant", "content": "EMPTY"},
    ]


# ---- check_trace


def verdict_tuple(v: netsformat.Verdict):
    return v.answer, v.correct, v.valid, v.exact, v.failure


@pytest.mark.parametrize("strategy", ["leftmost", "priority"])
@pytest.mark.parametrize("net", ["ADB", "CAB", "ADAB", "BA", "", "AB", "CCBBAD"])
def test_reference_trace_is_correct_valid_exact(net, strategy):
    v = check_trace(net, reference(net, strategy), "full", strategy, looped=False)
    red = nets.reduce(net)
    assert verdict_tuple(v) == (red.normal_form, True, True, True, None)
    assert v.states == nets.trace(net, strategy)[1:] or (red.steps == 0 and v.states == [net])


def test_step_shape_outputs_check_like_full():
    # evaluate iterates the step shape: each output line is one element of `lines`
    net = "CCBBAD"
    lines = [netsformat.step_answer(s, "priority") for s in nets.trace(net, "priority")[:-1]]
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

ALIGNED = netsformat.Layout(blanks=True, frame=6)


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
    assert netsformat.prompt("BBBBBBBB", ALIGNED) == "B B B B B B B B"


@pytest.mark.parametrize("net", ["ADCB", "AADDCB", "CCDDAB", "BDAC", ""])
def test_blank_lines_stand_for_the_plain_pass(net):
    """Every blanked line reads back as the plain line's state, as long as the input."""
    plain = netsformat.reference_lines(net, "pass", "priority")
    blank = netsformat.reference_lines(net, "pass", "priority", ALIGNED)
    assert [netsformat.read_line(b, ALIGNED) for b in blank] == [netsformat.read_line(p) for p in plain]
    for state, text in zip(nets.parallel_trace(net), blank):
        assert len(text.removesuffix(netsformat.CONTINUES).split(" ")) == max(len(state), 1)


def test_prompt_reads_back_without_its_padding():
    for net in ["", "A", "ADCB", "BBBBBBBB"]:
        assert netsformat.read_prompt(netsformat.prompt(net, ALIGNED)) == net
    assert netsformat.read_prompt("A . B") is None


def test_blank_verdicts():
    ok = check_trace("ABDCB", ["_ _ D B C"], "pass", "priority", False, ALIGNED)
    assert ok.correct and ok.valid and ok.exact
    # blanks in the wrong places stand for the same state: valid, not exact
    moved = check_trace("ABDCB", ["D _ _ B C"], "pass", "priority", False, ALIGNED)
    assert moved.valid and not moved.exact
    # a line of blanks alone is the empty net; EMPTY is read as itself
    assert check_trace("AB", ["_ _"], "pass", "priority", False, ALIGNED).exact
    assert check_trace("AB", ["EMPTY"], "pass", "priority", False, ALIGNED).valid
    assert netsformat.read_line("_ _ =", ALIGNED) == "" and netsformat.read_line("_ A", ALIGNED) == "A"
    # without the blanks option a blank is malformed
    assert check_trace("ABDCB", ["_ _ D B C"], "pass", "priority", False).failure == "malformed"


# ---- marks: false and pack

LOCAL = netsformat.Layout(blanks=True, frame=9, marks=False, pack=True)


def test_without_marks_the_normal_net_answers_itself_and_ends_the_trace():
    unmarked = netsformat.Layout(blanks=True, frame=6, marks=False)
    assert netsformat.reference_lines("CADB", "pass", "priority", unmarked) == ["C D A B", "_ _ _ _", "_"]
    assert netsformat.reference_lines("BA", "pass", "priority", unmarked) == ["B A"]
    ok = check_trace("ABDCB", ["_ _ D B C", "D B C"], "pass", "priority", False, unmarked)
    assert ok.correct and ok.valid and ok.exact
    # repeating a net that still has a redex is a wrong rewrite and a wrong answer
    stuck = check_trace("ADB", ["A D B"], "pass", "priority", False, unmarked)
    assert not stuck.correct and stuck.failure == "wrong_rewrite"
    # decoding goes on while a line changes something; a mark means nothing here
    assert netsformat.more_follow("_ _ D B C", "ABDCB", "DBC", unmarked)
    assert not netsformat.more_follow("D B C", "DBC", "DBC", unmarked)
    assert netsformat.more_follow("D B C =", "DBC", "DBC", netsformat.Layout(True, 6))


def test_pack_puts_states_side_by_side_and_each_is_its_own_pass():
    class Widest(random.Random):  # every line as wide as the frame
        def randint(self, a, b):
            return b

    got = list(netsformat.packed(["AB", "DC", "ADC", "", "CBDA", "AAAAAAAAAA"], LOCAL, Widest()))
    assert got == [
        ("_ . . . . . . . .", "_"),  # the empty net: one blank, a line of its own
        ("A B . D C . A D C", "_ _ . D C . D A C"),  # 9 symbols: the frame is full
        ("A A A A A A A A A A", "A A A A A A A A A A"),  # longer than the frame: alone
        ("C B D A . . . . .", "B C D A"),
    ]


def test_packed_lines_take_random_widths_and_keep_every_state_in_order():
    rng = random.Random(0)
    states = [nets.sample_net(rng, rng.randint(1, 5)) for _ in range(400)]
    lines = list(netsformat.packed(states, LOCAL, random.Random(1)))
    parts = [user.rstrip(" .").split(" . ") for user, _ in lines]
    assert [nets.parse(p) for line in parts for p in line] == states
    used = [len(user.rstrip(" .").split(" ")) for user, _ in lines]
    assert max(used) <= LOCAL.frame and min(used) < 4 and max(used) > 6  # short lines and full ones
    assert any(len(p) == 1 for p in parts) and any(len(p) > 1 for p in parts)
    for (user, answer), line in zip(lines, parts):
        assert answer == " . ".join(netsformat.pass_answer(nets.parse(p), LOCAL) for p in line)
        assert len(answer.split(" ")) == len(user.rstrip(" .").split(" "))  # symbol under symbol


def test_pack_needs_blanks_a_frame_and_no_marks():
    assert LOCAL.problems() == []
    for bad in (
        netsformat.Layout(blanks=False, frame=9, marks=False, pack=True),
        netsformat.Layout(blanks=True, frame=0, marks=False, pack=True),
        netsformat.Layout(blanks=True, frame=9, marks=True, pack=True),
    ):
        assert bad.problems() and "pack" in bad.problems()[0]
    assert netsformat.Layout.of({"blanks": True, "frame": 8}) == netsformat.Layout(True, 8, True, False)


def test_a_border_starts_every_line_and_is_read_away():
    edged = netsformat.Layout(blanks=True, frame=6, marks=False, pack=True, border=True)
    assert netsformat.prompt("AD", edged) == ". A D . . . ."
    assert netsformat.pass_answer("AD", edged) == ". D A"
    assert netsformat.pass_answer("", edged) == ". _"
    assert netsformat.read_prompt(". A D . . . .") == "AD" and netsformat.read_prompt(". _ . .") == ""
    assert netsformat.read_line(". _ _ D", edged) == "D" and netsformat.read_line("_ _ D", edged) is None
    assert list(netsformat.packed(["AB", "D"], edged, random.Random(0))) in (
        [(". A B . D . .", ". _ _ . D")],
        [(". A B . . . .", ". _ _"), (". D . . . . .", ". D")],
    )
    ok = check_trace("ABDCB", [". _ _ D B C", ". D B C"], "pass", "priority", False, edged)
    assert ok.correct and ok.valid and ok.exact
