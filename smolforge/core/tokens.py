"""Flat token files: the contract between `pretokenize` and `train` / `evaluate`.

A split `name` in a folder is three files plus the folder's `meta.json`:

    name.bin   all examples' tokens back to back, uint16 (uint32 if the vocab needs it)
    name.idx   int64 offsets, n_examples + 1 of them; example i is bin[idx[i]:idx[i+1]]
    name.mask  uint8 per token, 1 where the token is a training target
    name.bytes int64 per example, UTF-8 bytes of its target text (the bits-per-byte
               denominator; optional: splits written before it existed have none)
    name.pos   uint16 per token, its position id (optional: only layouts whose ids are
               not 0, 1, 2, ... per example write it; smolforge/core/positions.py)

numpy only, so text stages can read them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from smolforge.core.cli import StageError, produced_by

FORMAT_VERSION = 2  # 2: meta.json "task" is format's whole task record (smolforge.core.card.Task)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def write_split(
    folder: Path,
    name: str,
    examples: list[tuple[list[int], list[int]]],
    dtype,
    target_bytes: list[int] | None = None,
    positions: list[list[int]] | None = None,
) -> dict:
    """Write (token ids, loss mask) pairs as one split, with each example's target text
    bytes and each token's position id when given; returns its counts."""
    from smolforge.core.io import atomic_file

    lengths = np.array([len(ids) for ids, _ in examples], dtype=np.int64)
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter(chain.from_iterable(ids for ids, _ in examples), dtype=dtype, count=offsets[-1])
    mask = np.fromiter(chain.from_iterable(ms for _, ms in examples), dtype=np.uint8, count=offsets[-1])
    files = [("bin", tokens), ("idx", offsets), ("mask", mask)]
    if target_bytes is not None:
        assert len(target_bytes) == len(examples), "one target byte count per example"
        files.append(("bytes", np.asarray(target_bytes, dtype=np.int64)))
    if positions is not None:
        assert [len(q) for q in positions] == lengths.tolist(), "one position id per token"
        pos = np.fromiter(chain.from_iterable(positions), dtype=np.uint16, count=offsets[-1])
        files.append(("pos", pos))
    for suffix, arr in files:
        with atomic_file(folder / f"{name}.{suffix}", "wb") as f:
            f.write(arr.tobytes())
    return {
        "n_examples": len(examples),
        "n_tokens": int(offsets[-1]),
        "n_loss_tokens": int(mask.sum()),
        "max_example_tokens": int(lengths.max()) if len(lengths) else 0,
        **({"n_target_bytes": int(sum(target_bytes))} if target_bytes is not None else {}),
    }


@dataclass
class TokenSplit:
    """A split read back: tokens, offsets and mask as numpy arrays (memory-mapped)."""

    tokens: np.ndarray
    offsets: np.ndarray
    mask: np.ndarray
    target_bytes: np.ndarray | None = None  # (n_examples,) int64; None when not stored
    positions: np.ndarray | None = None  # (n_tokens,) uint16 position ids; None: 0, 1, 2, ... per example

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.tokens[a:b], self.mask[a:b]

    def example_positions(self, i: int) -> np.ndarray:
        """Position ids of example i (stored ones, else 0, 1, 2, ...)."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return np.arange(b - a) if self.positions is None else self.positions[a:b]


def read_split(folder: Path, name: str, meta: dict) -> TokenSplit:
    """Open a split and check that its three files agree with each other and `meta`."""
    where = produced_by("pretokenize")
    paths = {s: Path(folder) / f"{name}.{s}" for s in ("bin", "idx", "mask")}
    for p in paths.values():
        if not p.is_file():
            raise StageError(f"{p}: file not found {where}")
    dtype = np.dtype(meta["dtype"])
    if paths["bin"].stat().st_size % dtype.itemsize:
        raise StageError(f"{paths['bin']}: size is not a whole number of {dtype.name} tokens {where}")
    if paths["idx"].stat().st_size % 8:
        raise StageError(f"{paths['idx']}: size is not a whole number of int64 offsets {where}")
    tokens = (
        np.memmap(paths["bin"], dtype=dtype, mode="r") if paths["bin"].stat().st_size else np.zeros(0, dtype)
    )
    offsets = np.fromfile(paths["idx"], dtype=np.int64)
    mask = np.fromfile(paths["mask"], dtype=np.uint8)
    ok = (
        len(offsets) >= 1
        and offsets[0] == 0
        and offsets[-1] == len(tokens) == len(mask)
        and bool(np.all(np.diff(offsets) >= 0))
    )
    if not ok:
        raise StageError(f"{folder}/{name}.*: token, offset and mask files disagree (truncated?) {where}")
    if len(tokens) and int(tokens.max()) >= meta["vocab_size"]:
        raise StageError(f"{paths['bin']}: token id beyond vocab_size {meta['vocab_size']} {where}")
    target_bytes = None
    bytes_path = Path(folder) / f"{name}.bytes"
    if bytes_path.is_file():
        target_bytes = np.fromfile(bytes_path, dtype=np.int64)
        if len(target_bytes) != len(offsets) - 1:
            raise StageError(
                f"{bytes_path}: {len(target_bytes)} byte counts for {len(offsets) - 1} examples {where}"
            )
    positions = None
    pos_path = Path(folder) / f"{name}.pos"
    if pos_path.is_file():
        positions = np.fromfile(pos_path, dtype=np.uint16)
        if len(positions) != len(tokens):
            raise StageError(f"{pos_path}: {len(positions)} position ids for {len(tokens)} tokens {where}")
    return TokenSplit(tokens, offsets, mask, target_bytes, positions)
