"""smolforge.nets.reducer: rewrite rules, strategies, confluence and step bounds, text form, SplitSampler."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smolforge.nets import reducer

NORMAL_SHAPE = re.compile(r"[BD]*[AC]*")


def all_nets(max_len: int):
    return itertools.chain.from_iterable(reducer.enumerate_nets(n) for n in range(max_len + 1))


@pytest.fixture(scope="module")
def leftmost_table() -> dict[str, reducer.Reduction]:
    """reduce(net) for every net up to length 8 (87,381 nets)."""
    return {net: reducer.reduce(net, "leftmost") for net in all_nets(8)}


# ---- rules


@pytest.mark.parametrize("net, after", [("AB", ""), ("CD", ""), ("AD", "DA"), ("CB", "BC")])
def test_each_rule_is_one_step(net, after):
    assert reducer.successors(net) == {after}
    for strategy in ("leftmost", "priority"):
        assert reducer.trace(net, strategy) == [net, after]


@pytest.mark.parametrize("pair", ["AA", "AC", "BA", "BB", "BC", "BD", "CA", "CC", "DA", "DB", "DC", "DD"])
def test_no_rule_for_other_pairs(pair):
    assert reducer.is_normal(pair) and reducer.successors(pair) == set()
    assert reducer.redex(pair, "leftmost") == reducer.redex(pair, "priority") == -1


def test_final_pair_is_deleted():
    # the original generator dropped the rewrite of a redex that ends the net
    assert reducer.trace("CAB", "leftmost") == ["CAB", "C"]
    assert reducer.trace("CAB", "priority") == ["CAB", "C"]
    assert reducer.reduce("DCD") == reducer.Reduction("D", 1)


def test_worked_example():
    assert reducer.trace("ADB", "leftmost") == ["ADB", "DAB", "D"]
    assert reducer.reduce("ADB") == reducer.Reduction("D", 2)


def test_successors():
    assert reducer.successors("ABCD") == {"CD", "AB"}
    assert reducer.successors("CBAD") == {"BCAD", "CBDA"}
    assert reducer.successors("ADAD") == {"DAAD", "ADDA"}
    assert reducer.successors("BDAC") == set()
    assert reducer.successors("") == set()


# ---- strategies


def test_strategies_choose_different_redexes():
    # leftmost takes the A D at 0; priority prefers the A B rule, found at 2
    assert reducer.redex("ADAB", "leftmost") == 0
    assert reducer.redex("ADAB", "priority") == 2
    assert reducer.trace("ADAB", "leftmost") == ["ADAB", "DAAB", "DA"]
    assert reducer.trace("ADAB", "priority") == ["ADAB", "AD", "DA"]
    n_differ = sum(
        reducer.trace(net, "leftmost") != reducer.trace(net, "priority") for net in reducer.enumerate_nets(6)
    )
    assert n_differ > 100


def test_priority_follows_rule_order():
    # "CD" comes after "AB" in RULES, so priority skips the earlier C D for the later A B
    assert reducer.redex("CDAB", "priority") == 2
    assert reducer.redex("CDAB", "leftmost") == 0
    assert reducer.redex("CBAD", "priority") == 2  # A D (rule 3) before C B (rule 4)


def test_strategies_agree_exhaustively_up_to_length_8(leftmost_table):
    for net, red in leftmost_table.items():
        assert reducer.reduce(net, "priority") == red, net


def test_every_rewrite_order_gives_same_answer_and_steps(leftmost_table):
    # every one-step successor is one step closer to the same normal form; by induction,
    # every rewrite order (not only the two strategies) agrees
    for net, red in leftmost_table.items():
        for nxt in reducer.successors(net):
            assert leftmost_table[nxt] == reducer.Reduction(red.normal_form, red.steps - 1), (net, nxt)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ABCD", max_size=40), st.randoms(use_true_random=False))
def test_strategies_agree_on_random_nets(net, rng):
    left = reducer.reduce(net, "leftmost")
    assert reducer.reduce(net, "priority") == left
    assert NORMAL_SHAPE.fullmatch(left.normal_form)
    assert left.steps <= reducer.max_steps(len(net))
    # a random rewrite order reaches the same normal form in the same number of steps
    state, steps = net, 0
    while succ := sorted(reducer.successors(state)):
        state, steps = rng.choice(succ), steps + 1
    assert (state, steps) == (left.normal_form, left.steps)


# ---- normal forms and step bounds


def test_normal_forms_have_shape_bd_then_ac(leftmost_table):
    for net, red in leftmost_table.items():
        assert reducer.is_normal(net) == bool(NORMAL_SHAPE.fullmatch(net)), net
        assert NORMAL_SHAPE.fullmatch(red.normal_form), net
        assert (red.steps == 0) == reducer.is_normal(net)


def test_worst_case_is_floor_n_squared_over_4(leftmost_table):
    # up to length 8 from reduce(); length 9 (262,144 nets) as steps(net) = 1 + steps(next),
    # memoised, which is what reduce() counts (checked against it up to length 8 above)
    steps = {net: red.steps for net, red in leftmost_table.items()}

    def count(net: str) -> int:
        if net not in steps:
            i = reducer.redex(net, "leftmost")
            steps[net] = 0 if i < 0 else 1 + count(reducer.rewrite_at(net, i))
        return steps[net]

    for n in range(10):
        worst = max(count(net) for net in reducer.enumerate_nets(n))
        assert worst == n * n // 4 == reducer.max_steps(n), n
    for k in range(8):
        assert reducer.reduce("A" * k + "D" * k).steps == k * k
        assert reducer.reduce("C" * k + "B" * (k + 1)).steps == k * (k + 1)


def test_enumerate_nets():
    assert list(reducer.enumerate_nets(0)) == [""]
    two = list(reducer.enumerate_nets(2))
    assert len(two) == 16 == len(set(two)) and two == sorted(two)


# ---- text form


@pytest.mark.parametrize("net, text", [("ADB", "A D B"), ("A", "A"), ("", "EMPTY")])
def test_text_round_trip(net, text):
    assert reducer.to_text(net) == text
    assert reducer.parse(text) == net
    assert reducer.parse(f" {text}\n") == net


@pytest.mark.parametrize(
    "text", ["", " ", "AB", "A  B", "A\tB", "a b", "A E", "A, B", "A EMPTY", "EMPTY A", "empty", "A =", "-"]
)
def test_parse_rejects_malformed(text):
    assert reducer.parse(text) is None


# ---- SplitSampler


def test_heldout_splits_are_disjoint_and_unique():
    s = reducer.SplitSampler(seed=1, max_heldout_share=0.5)
    test = s.heldout("test", 300, range(1, 9))
    val = s.heldout("val", 100, range(1, 9))
    ood = s.heldout("ood", 20, range(12, 13))
    for split in (test, val, ood):
        assert len(split) == len(set(split))
    assert not set(test) & set(val) and not set(test) & set(ood) and not set(val) & set(ood)
    assert all(1 <= len(n) <= 8 for n in test + val) and all(len(n) == 12 for n in ood)
    train = s.train(2000, range(1, 9))
    assert not set(train) & (set(test) | set(val) | set(ood))


def test_heldout_share_caps_short_lengths():
    s = reducer.SplitSampler(seed=3, max_heldout_share=0.5)
    # room: 2 of the 4 length-1 nets, 8 of 16, 32 of 64
    got = s.heldout("test", 42, range(1, 4))
    assert Counter(map(len, got)) == {1: 2, 2: 8, 3: 32}
    with pytest.raises(ValueError, match="split val: lengths 1-3 hold too few nets"):
        s.heldout("val", 1, range(1, 4))


def test_train_lengths_uniform_despite_heldout_claims():
    s = reducer.SplitSampler(seed=5, max_heldout_share=0.5)
    claimed = set(s.heldout("test", 42, range(1, 4)))  # every held-out slot of lengths 1-3
    train = s.train(6000, range(1, 4))
    counts = Counter(map(len, train))
    # 2,000 expected each; the binomial sd is about 37
    assert all(abs(counts[n] - 2000) < 200 for n in (1, 2, 3)), counts
    assert not claimed & set(train)
    assert set(n for n in train if len(n) == 1) == set("ABCD") - claimed


def test_same_seed_same_output_different_seed_different():
    def run(seed):
        s = reducer.SplitSampler(seed, 0.5)
        return s.heldout("test", 50, range(1, 9)), s.by_steps("strat", 6, 1, 6), s.train(100, range(1, 9))

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert run(7)[2] != run(8)[2]


def test_by_steps_gives_exactly_per_steps_nets_per_step_count():
    s = reducer.SplitSampler(seed=0, max_heldout_share=0.5)
    test = s.heldout("test", 200, range(1, 9))
    got = s.by_steps("strat", 6, 2, 9)
    steps = [reducer.reduce(n).steps for n in got]
    assert steps == sorted(steps)
    assert Counter(steps) == {k: 2 for k in range(10)}
    assert all(len(n) == 6 for n in got) and len(set(got)) == len(got)
    assert set(got[-2:]) == {"AAADDD", "CCCBBB"}  # the only two 9-step nets of length 6
    assert not set(got) & set(test)


def test_by_steps_impossible_step_count_raises():
    s = reducer.SplitSampler(seed=0, max_heldout_share=0.5)
    with pytest.raises(ValueError, match="split strat: length-4 nets take at most 4 steps"):
        s.by_steps("strat", 4, 1, 5)


def test_by_steps_counts_against_the_heldout_share():
    s = reducer.SplitSampler(seed=0, max_heldout_share=0.5)
    with pytest.raises(ValueError, match="length 1 holds too few nets for 3"):
        s.by_steps("strat", 1, 3, 0)  # 3 of the 4 length-1 nets would leave train 1 net
    got = s.by_steps("strat", 1, 2, 0)
    with pytest.raises(ValueError, match="too few nets"):
        s.heldout("test", 1, range(1, 2))  # by_steps already used length 1's share
    train = s.train(50, range(1, 2))  # and training still has nets to draw from
    assert set(train) == set("ABCD") - set(got)


def test_sample_net_is_uniform_over_symbols():
    rng = random.Random(0)
    counts = Counter(reducer.sample_net(rng, 4000))
    assert set(counts) == set("ABCD") and all(abs(c - 1000) < 150 for c in counts.values())


# ---- parallel passes


def _subset_rewrites(net: str) -> set[str]:
    """Brute force: every result of rewriting a non-empty subset of the redexes."""
    import itertools

    idx = [i for i in range(len(net) - 1) if net[i : i + 2] in dict(reducer.RULES)]
    out = set()
    for r in range(1, len(idx) + 1):
        for sub in itertools.combinations(idx, r):
            s, i = [], 0
            while i < len(net):
                if i in sub:
                    s.append(dict(reducer.RULES)[net[i : i + 2]])
                    i += 2
                else:
                    s.append(net[i])
                    i += 1
            out.add("".join(s))
    return out


def test_is_parallel_rewrite_matches_brute_force_for_all_short_nets():
    for n in range(6):
        for net in reducer.enumerate_nets(n):
            legal = _subset_rewrites(net)
            for m in range(n + 1):
                for cand in reducer.enumerate_nets(m):
                    assert reducer.is_parallel_rewrite(net, cand) == (cand in legal), (net, cand)


def test_parallel_trace_reaches_the_normal_form_in_fewer_lines():
    for n in range(9):
        for net in reducer.enumerate_nets(n):
            states = reducer.parallel_trace(net)
            assert states[-1] == reducer.reduce(net).normal_form
            assert len(states) - 1 <= reducer.reduce(net).steps
            assert all(reducer.is_parallel_rewrite(a, b) for a, b in zip(states, states[1:]))
    assert len(reducer.parallel_trace("A" * 10 + "D" * 10)) - 1 == 19  # vs 100 single rewrites


def test_vanishing_nets_reduce_to_nothing_and_cover_both_pair_kinds():
    rng = random.Random(3)
    seen = set()
    for n in range(0, 23, 2):
        for _ in range(200):
            net = reducer.sample_vanishing_net(rng, n)
            assert len(net) == n and reducer.reduce(net).normal_form == ""
            seen.add(net)
    assert {"AB", "CD", "ACDB", "CABD"} <= seen  # interleavings, not just concatenations


def test_train_split_draws_the_requested_vanishing_share():
    sampler = reducer.SplitSampler(seed=1, max_heldout_share=0.5)
    sampler.heldout("test", 200, range(1, 13))
    train = sampler.train(4000, range(1, 13), vanishing_share=0.2)
    vanishing = sum(reducer.reduce(t).normal_form == "" for t in train) / len(train)
    assert 0.17 < vanishing < 0.26  # 20% built + the few uniform nets that vanish anyway
    assert not set(train) & set(sampler.owner)
