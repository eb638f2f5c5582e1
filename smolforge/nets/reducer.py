"""Interaction nets in the A B C D system (CleverGPT / the A::B challenge).

A net is a string over `ABCD`; its text form separates symbols by spaces and writes the
empty net as `EMPTY`. Four rules rewrite a pair of neighbours:

    A B -> (nothing)    C D -> (nothing)    A D -> D A    C B -> B C

The system terminates and is confluent: every net has one normal form, of shape
(B|D)* (A|C)*, and every rewrite order takes the same number of steps (at most
floor(n^2 / 4) for length n). Internally nets are compact strings ("ADB"), which makes
every operation a `str.find`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

SYMBOLS = "ABCD"
EMPTY = "EMPTY"  # text form of the empty net: an explicit answer, never a blank line
# (pattern, replacement) in CleverGPT's priority order
RULES: tuple[tuple[str, str], ...] = (("AB", ""), ("CD", ""), ("AD", "DA"), ("CB", "BC"))
_REWRITE = dict(RULES)
Strategy = Literal["leftmost", "priority"]


def to_text(net: str) -> str:
    """ "ADB" -> "A D B"; "" -> "EMPTY"."""
    return " ".join(net) if net else EMPTY


def parse(text: str) -> str | None:
    """Text form -> compact net, or None when `text` is not a well-formed net."""
    text = text.strip()
    if text == EMPTY:
        return ""
    parts = text.split(" ")
    if not parts or any(len(p) != 1 or p not in SYMBOLS for p in parts):
        return None
    return "".join(parts)


def redex(net: str, strategy: Strategy) -> int:
    """Index of the pair the strategy rewrites next, or -1 when `net` is normal.

    `leftmost` takes the leftmost pair that any rule matches; `priority` takes the first
    rule (in RULES order) that matches anywhere, at its leftmost match.
    """
    hits = [net.find(pattern) for pattern, _ in RULES]
    if strategy == "priority":
        return next((i for i in hits if i >= 0), -1)
    found = [i for i in hits if i >= 0]
    return min(found) if found else -1


def rewrite_at(net: str, i: int) -> str:
    """Apply the rule matching the pair at `i` (which must be a redex)."""
    return net[:i] + _REWRITE[net[i : i + 2]] + net[i + 2 :]


def is_normal(net: str) -> bool:
    """True when no rule applies anywhere."""
    return all(pattern not in net for pattern, _ in RULES)


def trace(net: str, strategy: Strategy) -> list[str]:
    """All states from `net` to its normal form: [net, s1, ..., normal]."""
    states = [net]
    while (i := redex(states[-1], strategy)) >= 0:
        states.append(rewrite_at(states[-1], i))
    return states


def successors(net: str) -> set[str]:
    """Every net one legal rewrite away (any rule, any position)."""
    out = set()
    for i in range(len(net) - 1):
        if net[i : i + 2] in _REWRITE:
            out.add(rewrite_at(net, i))
    return out


def parallel_step(net: str) -> str:
    """Rewrite every redex at once. Redexes never overlap: a redex is (A|C)(B|D), and no
    symbol is both a right half (B, D) and a left half (A, C)."""
    out, i = [], 0
    while i < len(net):
        pair = net[i : i + 2]
        if pair in _REWRITE:
            out.append(_REWRITE[pair])
            i += 2
        else:
            out.append(net[i])
            i += 1
    return "".join(out)


def parallel_trace(net: str) -> list[str]:
    """States from `net` to its normal form, one parallel pass per state."""
    states = [net]
    while not is_normal(states[-1]):
        states.append(parallel_step(states[-1]))
    return states


def is_parallel_rewrite(prev: str, nxt: str) -> bool:
    """True when `nxt` is `prev` with a non-empty set of its redexes rewritten at once."""
    if prev == nxt:
        return False
    reachable = {0}  # positions j in nxt that prev[:i] can produce, for the current i
    i = 0
    while i < len(prev) and reachable:
        pair = prev[i : i + 2]
        keep = {j + 1 for j in reachable if j < len(nxt) and nxt[j] == prev[i]}
        if pair in _REWRITE:
            rep = _REWRITE[pair]
            done = {j + len(rep) for j in reachable if nxt[j : j + len(rep)] == rep}
            # keeping a redex's left half moves on by one; its right half starts no redex
            reachable = {j + 1 for j in keep if j < len(nxt) and nxt[j] == prev[i + 1]} | done
            i += 2
        else:
            reachable, i = keep, i + 1
    return len(nxt) in reachable


def max_steps(n: int) -> int:
    """The most rewrite steps any net of length n needs: floor(n^2 / 4)."""
    return n * n // 4


@dataclass(frozen=True)
class Reduction:
    """What the reducer knows about a net: the answer and the number of steps."""

    normal_form: str
    steps: int


def reduce(net: str, strategy: Strategy = "leftmost") -> Reduction:
    """Normal form and step count (both independent of the strategy)."""
    states = trace(net, strategy)
    return Reduction(states[-1], len(states) - 1)


def enumerate_nets(n: int) -> Iterator[str]:
    """All 4^n nets of length n, in lexicographic order."""
    if n == 0:
        yield ""
        return
    for head in SYMBOLS:
        for tail in enumerate_nets(n - 1):
            yield head + tail


def sample_net(rng: random.Random, n: int) -> str:
    """A net of length n with every symbol drawn uniformly and independently."""
    return "".join(rng.choice(SYMBOLS) for _ in range(n))


def _balanced(rng: random.Random, pairs: int, open_: str, close: str) -> list[str]:
    """A random balanced sequence of `pairs` open/close symbols (a Dyck word)."""
    out, depth, opens, closes = [], 0, pairs, pairs
    while opens or closes:
        if opens and (depth == 0 or rng.random() < opens / (opens + closes)):
            out.append(open_)
            depth, opens = depth + 1, opens - 1
        else:
            out.append(close)
            depth, closes = depth - 1, closes - 1
    return out


def sample_vanishing_net(rng: random.Random, n: int) -> str:
    """A net of even length n whose normal form is empty.

    A net vanishes when its A/B symbols alone form a balanced sequence (A opens, B
    closes) and so do its C/D symbols: B passes left through C and D through A until
    each meets its partner. Such nets are rare under uniform sampling (about 0.08% at
    length 20), so they are built: two balanced sequences, randomly interleaved.
    """
    ab = rng.randint(0, n // 2)
    first, second = _balanced(rng, ab, "A", "B"), _balanced(rng, n // 2 - ab, "C", "D")
    out, i, j = [], 0, 0
    while i < len(first) or j < len(second):
        left_a, left_c = len(first) - i, len(second) - j
        if left_a and rng.random() < left_a / (left_a + left_c):
            out.append(first[i])
            i += 1
        else:
            out.append(second[j])
            j += 1
    return "".join(out)


class SplitSampler:
    """Draws nets for several splits so that no net lands in two of them.

    Lengths are uniform over the requested range and symbols uniform. Held-out splits
    (test, validation, extra test sets) hold each net at most once, and take at most
    `max_heldout_share` of all nets of a length, so that very short lengths (4 nets of
    length 1) still leave nets for training; a length whose share is used up is redrawn.
    The training split may repeat a net, as uniform sampling does at short lengths.
    """

    def __init__(self, seed: int, max_heldout_share: float):
        self.rng = random.Random(seed)
        self.max_heldout_share = max_heldout_share
        self.owner: dict[str, str] = {}  # net -> the held-out split that claimed it
        self.claimed_by_length: dict[int, int] = {}

    def _room(self, n: int) -> bool:
        return self.claimed_by_length.get(n, 0) + 1 <= self.max_heldout_share * 4**n

    def claim(self, split: str, nets: list[str]) -> list[str]:
        """Hold out fixed nets (the worst-case swaps) for `split`: no other split, training
        included, draws them. A net another split claimed already is refused."""
        out = []
        for net in dict.fromkeys(nets):
            if net in self.owner:
                raise ValueError(f"split {split}: {to_text(net)} is held out by split {self.owner[net]} already")
            self.owner[net] = split
            self.claimed_by_length[len(net)] = self.claimed_by_length.get(len(net), 0) + 1
            out.append(net)
        return out

    def heldout(self, split: str, count: int, lengths: range) -> list[str]:
        """`count` distinct nets, none claimed by another split, lengths uniform."""
        out: list[str] = []
        while len(out) < count:
            open_lengths = [n for n in lengths if self._room(n)]
            if not open_lengths:
                raise ValueError(
                    f"split {split}: lengths {lengths.start}-{lengths.stop - 1} hold too few "
                    f"nets for {count} held-out nets"
                )
            n = self.rng.choice(open_lengths)
            net = sample_net(self.rng, n)
            if net in self.owner:
                continue
            self.owner[net] = split
            self.claimed_by_length[n] = self.claimed_by_length.get(n, 0) + 1
            out.append(net)
        return out

    def by_steps(self, split: str, n: int, per_steps: int, max_steps_: int) -> list[str]:
        """`per_steps` distinct nets of length n for each step count 0..max_steps_.

        Rejection sampling from uniform nets; gives up after a bounded number of draws.
        Its nets count against the held-out share of length n like any held-out split's.
        """
        if max_steps_ > max_steps(n):
            raise ValueError(
                f"split {split}: length-{n} nets take at most {max_steps(n)} steps, not {max_steps_}"
            )
        wanted = per_steps * (max_steps_ + 1)
        if self.claimed_by_length.get(n, 0) + wanted > self.max_heldout_share * 4**n:
            raise ValueError(f"split {split}: length {n} holds too few nets for {wanted} held-out nets")
        buckets: dict[int, list[str]] = {k: [] for k in range(max_steps_ + 1)}
        for _ in range(2_000_000):
            if all(len(b) == per_steps for b in buckets.values()):
                break
            net = sample_net(self.rng, n)
            k = reduce(net).steps
            if k in buckets and len(buckets[k]) < per_steps and net not in self.owner:
                self.owner[net] = split
                self.claimed_by_length[n] = self.claimed_by_length.get(n, 0) + 1
                buckets[k].append(net)
        missing = [k for k, b in buckets.items() if len(b) < per_steps]
        if missing:
            raise ValueError(f"split {split}: found too few length-{n} nets with steps {missing}")
        return [net for k in sorted(buckets) for net in buckets[k]]

    def train(self, count: int, lengths: range, vanishing_share: float = 0.0) -> list[str]:
        """`count` nets with uniform lengths, skipping any net a held-out split owns.

        A `vanishing_share` of them are drawn among nets whose normal form is empty
        (even lengths only), so that the model meets the empty answer often enough.
        """
        out: list[str] = []
        even = [n for n in lengths if n % 2 == 0 and n > 0]
        while len(out) < count:
            vanish = bool(even) and self.rng.random() < vanishing_share
            n = self.rng.choice(even if vanish else lengths)
            draw = sample_vanishing_net if vanish else sample_net
            # redraw within the length, so held-out nets do not skew the length mix
            for _ in range(10_000):
                if (net := draw(self.rng, n)) not in self.owner:
                    out.append(net)
                    break
        return out
