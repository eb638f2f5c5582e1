"""smolforge.trainloop: one process steps exactly as the old inline loop did, ranks share a
global batch without overlap, and bf16 autocast stays deterministic on CPU."""

from __future__ import annotations

import numpy as np
import torch

from smolforge import model as model_lib
from smolforge import trainloop, validation
from smolforge.data import Sampler, collate, count, eval_batches
from smolforge.model import LlamaShape
from smolforge.tokens import TokenSplit

CPU = trainloop.Dist(0, 1, torch.device("cpu"))
SHAPE = LlamaShape(
    dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32, max_seq_len=32, rope_theta=10000.0
)


def make_split(n: int = 40, seed: int = 0) -> TokenSplit:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 12, size=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = rng.integers(3, 30, size=int(offsets[-1])).astype(np.uint16)
    mask = (rng.random(int(offsets[-1])) < 0.6).astype(np.uint8)
    return TokenSplit(tokens, offsets, mask)


def tiny_model():
    torch.set_num_threads(1)
    return model_lib.build(model_lib.llama_config(SHAPE, 30, 1, 2, 0), seed=3)


def run_steps(dtype: str, n_steps: int = 3, split: TokenSplit | None = None):
    split = split or make_split()
    model = tiny_model()
    opt = trainloop.optimizer(model, 1e-2, [0.9, 0.98], 0.1)
    sampler = Sampler(len(split), 8, 5, lengths=np.diff(split.offsets), bucket=2)
    losses = []
    for _ in range(n_steps):
        s = trainloop.next_step(split, sampler, 2, 0, CPU)
        losses += trainloop.step(model, model, opt, s, 1e-2, 1.0, dtype, CPU)
    return model, losses


def test_one_process_is_the_old_inline_loop_bit_for_bit():
    split = make_split()
    model, losses = run_steps("float32", split=split)
    # the loop as stages/train.py wrote it before the step moved to trainloop
    ref = tiny_model()
    opt = trainloop.optimizer(ref, 1e-2, [0.9, 0.98], 0.1)
    sampler = Sampler(len(split), 8, 5, lengths=np.diff(split.offsets), bucket=2)
    ref_losses = []
    for _ in range(3):
        batches = [collate(split, sampler.next_indices(), 0) for _ in range(2)]
        n_targets = sum(b.n_targets for b in batches)
        for batch in batches:
            loss = validation.loss_sum(ref, batch) / n_targets
            loss.backward()
            ref_losses.append(loss.item() * n_targets)
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert losses == ref_losses
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_ranks_take_disjoint_shares_that_cover_the_global_batch():
    split = make_split()
    shares, steps = [], []
    for rank in range(3):
        sampler = Sampler(len(split), 8, 5)  # every rank draws the same global batches
        d = trainloop.Dist(rank, 3, torch.device("cpu"))
        steps.append(trainloop.next_step(split, sampler, 1, 0, d))
        shares.append(Sampler(len(split), 8, 5).next_indices()[rank::3])
    global_batch = Sampler(len(split), 8, 5).next_indices()
    assert sorted(i for s in shares for i in s) == sorted(global_batch)
    assert {s.n_targets for s in steps} == {count(split, global_batch)[1]}  # the global count, on every rank
    assert sum(s.batches[0].n_targets for s in steps) == steps[0].n_targets
    assert sum(s.batches[0].n_tokens for s in steps) == steps[0].n_tokens


def test_a_rank_with_an_empty_share_runs_a_step_with_no_targets():
    split = make_split(n=9)  # batch 8: the second batch of a pass holds one example
    sampler = Sampler(len(split), 8, 5)
    sampler.next_indices()
    s = trainloop.next_step(split, sampler, 1, 0, trainloop.Dist(1, 2, torch.device("cpu")))
    assert s.batches[0].input_ids.shape[0] == 1 and bool((s.batches[0].labels == -100).all())
    assert s.batches[0].n_tokens == 0 and s.n_targets > 0


def test_count_matches_collate():
    split = make_split()
    b = collate(split, [3, 1, 4, 1, 5], 0)
    assert count(split, [3, 1, 4, 1, 5]) == (b.n_tokens, b.n_targets)


def test_sharded_validation_sums_to_the_whole():
    split, model = make_split(), tiny_model()
    whole = validation.loss_total(model, split, 4, 0, 30)
    parts = [validation.loss_total(model, split, 4, 0, 30, rank, 3) for rank in range(3)]
    assert sum(c for _, c in parts) == whole[1] == sum(b.n_targets for b in eval_batches(split, 4, 0, 30))
    assert abs(sum(t for t, _ in parts) - whole[0]) < 1e-9 * abs(whole[0])


def test_bf16_autocast_is_deterministic_and_close_to_float32():
    a, la = run_steps("bfloat16")
    b, lb = run_steps("bfloat16")
    assert la == lb and all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    _, l32 = run_steps("float32")
    assert np.allclose(la, l32, rtol=2e-2)
