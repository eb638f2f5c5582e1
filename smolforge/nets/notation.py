"""The two ways users write nets: CleverGPT's `A B C D` and the A::B challenge's
`A# #A B# #B`, the same system under other names.

A::B's rules are `A# #A` -> nothing, `B# #B` -> nothing, `A# #B` -> `#B A#` and
`B# #A` -> `#A B#`; with A = `A#`, B = `#A`, C = `B#`, D = `#B` they are this project's
`A B` -> nothing, `C D` -> nothing, `A D` -> `D A`, `C B` -> `B C` (smolforge.nets.reducer).
The model always sees `A B C D`; a user's file keeps its own notation in the predictions.
"""

from __future__ import annotations

from typing import Literal

Notation = Literal["abcd", "ab"]
TO_AB = {"A": "A#", "B": "#A", "C": "B#", "D": "#B"}
FROM_AB = {v: k for k, v in TO_AB.items()}


def detect(text: str) -> Notation:
    """`ab` when the net is written in A::B's symbols (any `#`), else `abcd`."""
    return "ab" if "#" in text else "abcd"


def to_abcd(text: str) -> str | None:
    """An A::B net (`A# #B ...`, space-separated) in `A B C D` form; None when a word is
    not one of the four A::B symbols."""
    words = text.split()
    if not all(w in FROM_AB for w in words):
        return None
    return " ".join(FROM_AB[w] for w in words)


def write(text: str, notation: Notation) -> str:
    """A line of the model's (symbols A-D, plus the layout's `.`, `_`, `=`) in `notation`."""
    if notation == "abcd":
        return text
    return " ".join(TO_AB.get(w, w) for w in text.split(" "))
