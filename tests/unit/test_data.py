"""smolforge.core.data: collate (padding, labels, target counts), the resumable Sampler, eval_batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smolforge.core.data import IGNORE, Sampler, collate, eval_batches
from smolforge.core.tokens import TokenSplit, read_split, token_dtype, write_split

PAD = 271


def make_split(examples: list[tuple[list[int], list[int]]], dtype=np.uint16) -> TokenSplit:
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    np.cumsum([len(ids) for ids, _ in examples], out=offsets[1:])
    tokens = np.array([t for ids, _ in examples for t in ids], dtype=dtype)
    mask = np.array([m for _, ms in examples for m in ms], dtype=np.uint8)
    return TokenSplit(tokens, offsets, mask)


SPLIT = make_split(
    [
        ([10, 11, 12, 13], [0, 0, 1, 1]),
        ([20, 21], [1, 1]),
        ([30, 31, 32], [0, 1, 0]),
        ([65_000, 40], [0, 1]),  # a large uint16 id
    ]
)


def test_collate_right_pads_and_masks_labels():
    b = collate(SPLIT, [0, 1, 2], PAD)
    assert b.input_ids.dtype == torch.int64 and b.labels.dtype == torch.int64
    assert b.input_ids.tolist() == [[10, 11, 12, 13], [20, 21, PAD, PAD], [30, 31, 32, PAD]]
    assert b.labels.tolist() == [
        [IGNORE, IGNORE, 12, 13],
        [20, 21, IGNORE, IGNORE],
        [IGNORE, 31, IGNORE, IGNORE],
    ]
    assert b.n_tokens == 9


def test_collate_order_follows_indices():
    b = collate(SPLIT, [2, 0], PAD)
    assert b.input_ids[:, 0].tolist() == [30, 10]


def test_n_targets_excludes_position_zero():
    # example 1 is a target at position 0, which no earlier token predicts
    assert collate(SPLIT, [0, 1, 2], PAD).n_targets == 2 + 1 + 1
    assert collate(SPLIT, [1], PAD).n_targets == 1
    assert collate(SPLIT, [0], PAD).n_targets == 2


def test_labels_never_wrap_uint16():
    b = collate(SPLIT, [3, 1], PAD)
    assert b.labels.tolist() == [[IGNORE, 40], [20, 21]]
    assert b.input_ids.tolist() == [[65_000, 40], [20, 21]]
    labels = set(b.labels.flatten().tolist())
    assert labels <= {IGNORE, 20, 21, 40}
    assert 65_436 not in labels  # -100 as uint16
    b = collate(make_split([([65_000, 65_001], [1, 1])]), [0], PAD)
    assert b.labels.tolist() == [[65_000, 65_001]]


def test_collate_on_a_split_read_from_disk(tmp_path):
    examples = [([1, 2, 3], [0, 1, 1]), ([4], [1])]
    write_split(tmp_path, "val", examples, token_dtype(300))
    split = read_split(tmp_path, "val", {"dtype": "uint16", "vocab_size": 300})
    b = collate(split, [1, 0], 0)
    assert b.input_ids.tolist() == [[4, 0, 0], [1, 2, 3]]
    assert b.labels.tolist() == [[4, IGNORE, IGNORE], [IGNORE, 2, 3]]


def drain(sampler: Sampler, n_batches: int) -> list[list[int]]:
    return [sampler.next_indices() for _ in range(n_batches)]


def test_sampler_covers_every_example_once_per_epoch():
    s = Sampler(10, 3, seed=1)
    epoch0 = drain(s, 4)
    assert [len(b) for b in epoch0] == [3, 3, 3, 1]  # the pass ends early rather than wrap
    assert sorted(i for b in epoch0 for i in b) == list(range(10))
    epoch1 = drain(s, 4)
    assert sorted(i for b in epoch1 for i in b) == list(range(10))
    assert epoch0 != epoch1  # a fresh order each epoch
    assert s.position() == {"epoch": 1, "index": 10}


def test_sampler_is_deterministic_for_a_seed():
    assert drain(Sampler(50, 8, seed=3), 20) == drain(Sampler(50, 8, seed=3), 20)
    assert drain(Sampler(50, 8, seed=3), 20) != drain(Sampler(50, 8, seed=4), 20)


@pytest.mark.parametrize("k", [0, 1, 3, 4, 5, 7, 13])
def test_sampler_resumes_from_position(k):
    s = Sampler(10, 3, seed=7)
    drain(s, k)
    pos = s.position()
    rest = drain(s, 12)
    resumed = Sampler(10, 3, seed=7, **pos)
    assert drain(resumed, 12) == rest


def test_sampler_does_not_touch_global_torch_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    drain(Sampler(20, 4, seed=1), 10)
    assert torch.equal(torch.rand(3), expected)


def test_eval_batches_order_and_limit():
    batches = list(eval_batches(SPLIT, 3, PAD, limit=0))
    assert [b.input_ids[:, 0].tolist() for b in batches] == [[10, 20, 30], [65_000]]
    batches = list(eval_batches(SPLIT, 2, PAD, limit=3))
    assert [b.input_ids[:, 0].tolist() for b in batches] == [[10, 20], [30]]
    assert [b.input_ids[:, 0].tolist() for b in eval_batches(SPLIT, 2, PAD, limit=99)] == [
        [10, 20],
        [30, 65_000],
    ]
    assert [b.input_ids[:, 0].tolist() for b in eval_batches(SPLIT, 5, PAD, limit=-1)] == [
        [10, 20, 30, 65_000]
    ]


def test_length_buckets_cut_padding_but_keep_every_example_and_resume():
    lengths = np.array([(i * 7919) % 40 + 1 for i in range(200)])
    plain = Sampler(200, 8, seed=5)
    bucketed = Sampler(200, 8, seed=5, lengths=lengths, bucket=5)
    a, b = drain(plain, 25), drain(bucketed, 25)
    assert sorted(i for x in b for i in x) == list(range(200))

    def padded(batches):
        return sum(len(x) * max(lengths[x]) for x in batches)

    assert padded(b) < 0.75 * padded(a)
    assert drain(Sampler(200, 8, seed=5, lengths=lengths, bucket=5), 25) == b  # deterministic
    s = Sampler(200, 8, seed=5, lengths=lengths, bucket=5)
    drain(s, 11)
    resumed = Sampler(200, 8, seed=5, lengths=lengths, bucket=5, **s.position())
    assert drain(resumed, 30) == drain(s, 30)
