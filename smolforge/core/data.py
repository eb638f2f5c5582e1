"""Batches for causal-LM training from flat token files (see smolforge/core/tokens.py).

Each batch is `batch_size` whole examples, right-padded to the longest of them. Right
padding needs no attention mask: under the causal mask a real token never sees the pads
after it. Padded positions and non-target tokens get label -100 (ignored by the loss).
A split with stored position ids (coupled layouts, smolforge/core/positions.py) gives
its batches those ids, pads at 0.

A packed batch (`pack`) is the same examples back to back in one row of no padding, with
positions restarting at 0 for each example and a block-diagonal causal mask, so no
example sees another, plus the positions whose next token is a target: the model
computes logits only there (`smolforge.core.validation.loss_sum`). Its loss equals the
padded batch's up to float rounding (tests/unit/test_data.py).
The example order is a permutation drawn from (seed, epoch), so the data position
`(epoch, index)` alone resumes it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from smolforge.core.tokens import TokenSplit

IGNORE = -100


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, IGNORE where not trained on
    n_tokens: int  # real (non-pad) tokens
    n_targets: int  # tokens that count in the loss
    # packed batches (B = 1), or padded ones of a split with stored positions; else None
    position_ids: torch.Tensor | None = None  # (B, T) int64; packed: restarting for each example
    attention_mask: torch.Tensor | None = None  # (1, 1, T, T) bool, True where a query may attend
    keep: torch.Tensor | None = None  # (K,) int64: positions whose next token is a target

    def to(self, device: torch.device) -> Batch:
        """The same batch on `device` (itself when it is there already)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(
            self.input_ids.to(device),
            self.labels.to(device),
            self.n_tokens,
            self.n_targets,
            move(self.position_ids),
            move(self.attention_mask),
            move(self.keep),
        )


def collate(split: TokenSplit, indices: list[int], pad_id: int) -> Batch:
    """Right-pad the examples `indices` of `split` into one batch."""
    examples = [split.example(i) for i in indices]
    T = max(len(t) for t, _ in examples)
    ids = np.full((len(examples), T), pad_id, dtype=np.int64)
    labels = np.full((len(examples), T), IGNORE, dtype=np.int64)
    for row, (toks, mask) in enumerate(examples):
        ids[row, : len(toks)] = toks
        labels[row, : len(toks)] = np.where(mask.astype(bool), toks.astype(np.int64), IGNORE)
    n_tokens = sum(len(t) for t, _ in examples)
    n_targets = int((labels[:, 1:] != IGNORE).sum())  # position 0 is never predicted
    positions = None
    if split.positions is not None:
        pos = np.zeros((len(examples), T), dtype=np.int64)
        for row, i in enumerate(indices):
            q = split.example_positions(i)
            pos[row, : len(q)] = q
        positions = torch.from_numpy(pos)
    return Batch(torch.from_numpy(ids), torch.from_numpy(labels), n_tokens, n_targets, positions)


def pack(split: TokenSplit, indices: list[int]) -> Batch:
    """The examples `indices` of `split` back to back in one row (B = 1, T = their total
    length): positions restart per example, the mask confines attention to each example,
    and `keep` lists the positions whose next token is a target (an example's last token
    predicts nothing, as in `collate`)."""
    if split.positions is not None:
        raise ValueError("packing restarts positions per example; this split stores its own position ids")
    examples = [split.example(i) for i in indices]
    lengths = [len(t) for t, _ in examples]
    ids = np.concatenate([t for t, _ in examples]).astype(np.int64)
    mask = np.concatenate([m for _, m in examples]).astype(bool)
    starts = np.cumsum([0] + lengths[:-1])
    first = np.zeros(len(ids), dtype=bool)  # first token of each example: never a target
    first[starts[np.array(lengths) > 0]] = True
    labels = np.where(mask & ~first, ids, IGNORE)
    keep = np.flatnonzero(labels[1:] != IGNORE)  # position t predicts token t + 1
    seg = np.repeat(np.arange(len(lengths)), lengths)
    positions = np.arange(len(ids)) - np.repeat(starts, lengths)
    seg_t = torch.from_numpy(seg)
    # (T, T): causal and within one example
    attend = (seg_t[:, None] == seg_t[None, :]) & torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
    return Batch(
        torch.from_numpy(ids)[None],
        torch.from_numpy(labels)[None],
        len(ids),
        len(keep),
        torch.from_numpy(positions)[None],
        attend[None, None],
        torch.from_numpy(keep),
    )


def count(split: TokenSplit, indices: list[int]) -> tuple[int, int]:
    """(real tokens, loss targets) of the examples `indices`, counted as `collate` counts
    them, without building the batch (each rank of a distributed step needs the global
    batch's counts, but builds only its own share)."""
    n_tokens, n_targets = 0, 0
    for i in indices:
        a, b = int(split.offsets[i]), int(split.offsets[i + 1])
        n_tokens += b - a
        n_targets += int(np.count_nonzero(split.mask[a + 1 : b]))  # position 0 is never predicted
    return n_tokens, n_targets


class Sampler:
    """Endless shuffled passes over a split, resumable from (epoch, index).

    With `lengths` and `bucket` > 1, each run of `bucket` batches is sorted by example
    length before it is cut into batches (whose order is then shuffled), so a batch pads
    to similar lengths: less padding, same examples per epoch, still seeded.
    """

    def __init__(
        self,
        n_examples: int,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        index: int = 0,
        lengths: np.ndarray | None = None,
        bucket: int = 1,
    ):
        self.n, self.batch_size, self.seed = n_examples, batch_size, seed
        self.lengths, self.bucket = lengths, bucket
        self.epoch, self.index = epoch, index
        self._perm = self._permutation()

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        if self.lengths is None or self.bucket <= 1:
            return perm
        out: list[int] = []
        chunk = self.batch_size * self.bucket
        for start in range(0, self.n, chunk):
            part = sorted(perm[start : start + chunk], key=lambda i: self.lengths[i])
            batches = [part[k : k + self.batch_size] for k in range(0, len(part), self.batch_size)]
            for b in torch.randperm(len(batches), generator=g).tolist():
                out.extend(batches[b])
        return out

    def next_indices(self) -> list[int]:
        """The next batch's example indices; a pass ends early rather than wrap."""
        if self.index >= self.n:
            self.epoch, self.index = self.epoch + 1, 0
            self._perm = self._permutation()
        out = self._perm[self.index : self.index + self.batch_size]
        self.index += len(out)
        return out

    def position(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}


def eval_batches(split: TokenSplit, batch_size: int, pad_id: int, limit: int, rank: int = 0, world: int = 1):
    """Fixed, in-order batches over the first `limit` examples (all when limit <= 0);
    with `world` > 1 only batches rank, rank + world, ... of them."""
    n = len(split) if limit <= 0 else min(limit, len(split))
    for start in range(rank * batch_size, n, world * batch_size):
        yield collate(split, list(range(start, min(start + batch_size, n))), pad_id)
