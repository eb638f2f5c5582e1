"""Position ids with jumps: a training example whose separate parts should sit far apart
in position, though close in tokens.

A packed line of the nets track holds several short nets side by side. At evaluation one
long net fills the line, and its tokens meet distances to unrelated tokens (the far end
of the line) that no short training line shows. Jumps close that gap: format records
`position_jumps` `[[segment, jump], ...]` for an example (drawn from its seed), and from
the first token of each listed segment on, every position id is `jump` larger. Ids still
increase along the example, so causal attention, the KV cache and llama.cpp's "one more
than the last" rule for positions are untouched; only training sees the jumps.

pretokenize stores the ids as `<split>.pos` (smolforge/core/tokens.py), train feeds them
to the model (smolforge/core/data.py).
"""

from __future__ import annotations


def with_jumps(segment_lengths: list[int], jumps: list | None) -> list[int]:
    """Position ids of an example whose segments have `segment_lengths` tokens, moved on
    by each `[segment, jump]` from that segment's first token."""
    at = {}
    for seg, jump in jumps or []:
        at[int(seg)] = at.get(int(seg), 0) + int(jump)
    ids, shift, k = [], 0, 0
    for s, n in enumerate(segment_lengths):
        shift += at.get(s, 0)
        ids.extend(range(k + shift, k + n + shift))
        k += n
    return ids
