"""smolforge.core.trainloop and smolforge.core.train: one process steps exactly as the old
inline loop did, ranks share a global batch without overlap, bf16 autocast stays
deterministic on CPU; the lr schedule, and a loop resumed from its checkpoint ends where
an uninterrupted one ends."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smolforge.core import model as model_lib
from smolforge.core import train as training
from smolforge.core import trainloop, validation
from smolforge.core.data import Sampler, collate, count, eval_batches
from smolforge.core.model import LlamaShape
from smolforge.core.tokens import TokenSplit

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
        losses += trainloop.step(trainloop.wrap(model, CPU, False), model, opt, s, 1e-2, 1.0, dtype, CPU)
    return model, losses


def test_one_process_is_the_old_inline_loop_bit_for_bit():
    split = make_split()
    model, losses = run_steps("float32", split=split)
    # the loop as stage train wrote it inline, before the step moved to trainloop
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


def params(**changes) -> training.TrainParams:
    p = dict(
        init="scratch", model=SHAPE, base=None, lora=None, seed=5, batch_size=8, length_buckets=2,
        grad_accum=2, lr=1e-2, min_lr=1e-3, warmup_steps=2, max_steps=6, weight_decay=0.1,
        betas=[0.9, 0.98], grad_clip=1.0, eval_every=3, eval_examples=0, checkpoint_every=2,
        log_every=3, threads=1, processes=1, device="cpu", dtype="float32", compile=False,
    )  # fmt: skip
    return training.TrainParams(**{**p, **changes})


def test_lr_warms_up_linearly_then_decays_along_a_cosine_to_the_floor():
    p = params(lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=24)
    assert [training.lr_at(s, p) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert training.lr_at(4, p) == 1.0  # the peak: the cosine starts at its top
    assert math.isclose(training.lr_at(14, p), 0.55)  # half way: the mean of peak and floor
    assert math.isclose(training.lr_at(24, p), 0.1) and math.isclose(training.lr_at(99, p), 0.1)
    decay = [training.lr_at(s, p) for s in range(4, 25)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


def make_job(p: training.TrainParams, state_dir) -> training.Job:
    model = tiny_model()
    opt = trainloop.optimizer(model, p.lr, p.betas, p.weight_decay)
    return training.Job(p, model, opt, CPU, make_split(), make_split(10, seed=1), 0, state_dir, "fp")


class Crash(Exception):
    pass


def test_a_loop_resumed_from_its_checkpoint_ends_where_an_uninterrupted_one_ends(tmp_path, monkeypatch):
    p = params()
    straight = make_job(p, tmp_path / "a")
    done = training.fit(straight, training.start(straight))
    assert done.step == 6 and [r[0] for r in done.history["train"]] == [3, 6]

    real = training.lr_at

    def crash_at_step_5(step, p):
        if step == 5:
            raise Crash()
        return real(step, p)

    crashed = make_job(p, tmp_path / "b")
    monkeypatch.setattr(training, "lr_at", crash_at_step_5)
    with pytest.raises(Crash):
        training.fit(crashed, training.start(crashed))
    monkeypatch.setattr(training, "lr_at", real)
    resumed = make_job(p, tmp_path / "b")
    progress = training.start(resumed)
    # the checkpoint at step 4: 8 batches of 8 drawn from 40 examples, a log window open since step 3
    assert progress.step == 4 and progress.sampler.position() == {"epoch": 1, "index": 24}
    assert progress.window_targets > 0 and progress.history["train"] == done.history["train"][:1]
    again = training.fit(resumed, progress)
    assert again.history == done.history and again.tokens_seen == done.tokens_seen
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(a, b)
