"""Packed batches (smolforge.core.data.pack) against padded ones: equal losses in float32,
no example sees another, logits only at target positions (also through LoRA), a packed
training step, per-example losses, target counts and bits per byte."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smolforge.core import model as model_lib
from smolforge.core import trainloop, validation
from smolforge.core.data import IGNORE, collate, pack
from smolforge.core.model import LlamaShape
from smolforge.core.tokens import TokenSplit, read_split, token_dtype, write_split

SHAPE = LlamaShape(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=64, rope_theta=10000.0
)
CPU = trainloop.Dist(0, 1, torch.device("cpu"))


def make_split(n: int = 12, seed: int = 0) -> TokenSplit:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 20, size=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = rng.integers(3, 50, size=int(offsets[-1])).astype(np.uint16)
    mask = (rng.random(int(offsets[-1])) < 0.5).astype(np.uint8)
    return TokenSplit(tokens, offsets, mask)


def tiny_model():
    torch.set_num_threads(1)
    return model_lib.build(model_lib.llama_config(SHAPE, 50, 1, 2, 0), seed=5).eval()


def test_pack_layout():
    split = TokenSplit(
        np.array([10, 11, 12, 20, 21, 30], dtype=np.uint16),
        np.array([0, 3, 5, 6]),
        np.array([1, 1, 0, 1, 1, 1], dtype=np.uint8),
    )
    b = pack(split, [0, 1, 2])
    assert b.input_ids.tolist() == [[10, 11, 12, 20, 21, 30]]
    assert b.position_ids.tolist() == [[0, 1, 2, 0, 1, 0]]
    # an example's first token is never a target, as in collate
    assert b.labels.tolist() == [[IGNORE, 11, IGNORE, IGNORE, 21, IGNORE]]
    assert b.keep.tolist() == [0, 3]  # position t predicts token t + 1
    assert (b.n_tokens, b.n_targets) == (6, 2)
    m = b.attention_mask[0, 0].int().tolist()
    assert m[4] == [0, 0, 0, 1, 1, 0]  # token 21 sees 20 and itself only
    assert m[5] == [0, 0, 0, 0, 0, 1]
    assert m[2] == [1, 1, 1, 0, 0, 0]


def test_pack_counts_match_collate():
    split = make_split()
    for idx in ([0, 1, 2, 3], [4], [5, 9, 11]):
        a, b = pack(split, idx), collate(split, idx, 0)
        assert (a.n_tokens, a.n_targets) == (b.n_tokens, b.n_targets)
        assert a.n_targets > 0


def test_packed_loss_equals_padded_loss_fp32():
    split, model = make_split(), tiny_model()
    with torch.no_grad():
        for idx in ([0, 1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11]):
            padded = validation.loss_sum(model, collate(split, idx, 0)).item()
            packed = validation.loss_sum(model, pack(split, idx)).item()
            assert packed == pytest.approx(padded, rel=1e-5, abs=1e-5)


def test_packed_gradients_equal_padded_gradients():
    split, model = make_split(), tiny_model()
    grads = []
    for b in (collate(split, [0, 1, 2, 3], 0), pack(split, [0, 1, 2, 3])):
        model.zero_grad()
        validation.loss_sum(model, b).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_a_neighbour_does_not_change_a_tokens_logits():
    split, model = make_split(), tiny_model()
    alone, beside = pack(split, [3]), pack(split, [7, 3, 1])
    start = len(split.example(7)[0])
    n = len(split.example(3)[0])
    with torch.no_grad():
        a = model(
            input_ids=alone.input_ids, position_ids=alone.position_ids, attention_mask=alone.attention_mask
        )
        b = model(
            input_ids=beside.input_ids, position_ids=beside.position_ids, attention_mask=beside.attention_mask
        )
    torch.testing.assert_close(b.logits[0, start : start + n], a.logits[0], rtol=1e-5, atol=1e-5)
    # and without the block mask the neighbour does leak in: the mask is what isolates it
    with torch.no_grad():
        c = model(input_ids=beside.input_ids, position_ids=beside.position_ids).logits
    assert (c[0, start : start + n] - a.logits[0]).abs().max() > 1e-3


def test_packed_loss_through_lora_matches_padded():
    from smolforge.core.train import LoraParams
    from smolforge.inits.lora import add_lora

    split = make_split()
    # LoRA wraps transformers' Linear modules: the HF model (the training model reads their weights)
    model = add_lora(model_lib.to_hf(tiny_model()), LoraParams(4, 8.0, 0.0, ["q_proj", "v_proj"]), seed=1)
    with torch.no_grad():  # B starts at zero: give the adapters a non-trivial output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.eval()
    with torch.no_grad():
        idx = [0, 2, 4, 6]
        padded = validation.loss_sum(model, collate(split, idx, 0)).item()
        packed = validation.loss_sum(model, pack(split, idx)).item()
    assert packed == pytest.approx(padded, rel=1e-5)


def test_packed_training_step_matches_padded_step():
    split = make_split(n=16)
    losses = {}
    for packed in (False, True):
        model = tiny_model().train()
        opt = trainloop.optimizer(model, 1e-2, [0.9, 0.98], 0.0)
        from smolforge.core.data import Sampler

        sampler = Sampler(len(split), 4, seed=1)
        out = []
        for _ in range(3):
            s = trainloop.next_step(split, sampler, 2, 0, CPU, packed=packed)
            out.append(sum(trainloop.step(trainloop.wrap(model, CPU, False), model, opt, s, 1e-2, 1.0, "float32", CPU)) / s.n_targets)
        losses[packed] = out
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)


def test_example_losses_match_per_example_padded_loss():
    split, model = make_split(), tiny_model()
    got = validation.example_losses(model, split, 5, 0)
    assert len(got) == len(split)
    with torch.no_grad():
        for i, (s, n) in enumerate(got):
            b = collate(split, [i], 0)
            assert n == b.n_targets
            assert s == pytest.approx(validation.loss_sum(model, b).item(), rel=1e-5, abs=1e-5)


def test_target_bytes_round_trip_and_bits_per_byte(tmp_path):
    examples = [([5, 6, 7], [0, 1, 1]), ([1, 2], [0, 1])]
    write_split(tmp_path, "val", examples, token_dtype(16), target_bytes=[7, 3])
    split = read_split(tmp_path, "val", {"dtype": "uint16", "vocab_size": 16})
    assert split.target_bytes.tolist() == [7, 3]
    assert validation.target_bytes(split) == 10 and validation.target_bytes(split, limit=1) == 7
    assert validation.bits_per_byte(10 * math.log(2), 10) == pytest.approx(1.0)
    write_split(tmp_path, "old", examples, token_dtype(16))
    assert read_split(tmp_path, "old", {"dtype": "uint16", "vocab_size": 16}).target_bytes is None


def test_target_bytes_count_utf8_of_target_segments():
    from smolforge.core.encode import target_bytes

    segs = [[("<s>", False), ("héllo", True), ("!", False)], [("ab", True), ("€", True)]]
    assert target_bytes(segs) == [6, 5]


def test_cross_entropy_on_kept_positions_matches_full_logits():
    # the kept positions' logits are the full forward's rows at those positions
    split, model = make_split(), tiny_model()
    b = pack(split, [0, 1])
    with torch.no_grad():
        full = model(
            input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=b.attention_mask
        ).logits
        kept = model(
            input_ids=b.input_ids,
            position_ids=b.position_ids,
            attention_mask=b.attention_mask,
            logits_to_keep=b.keep,
        ).logits
    assert kept.shape[1] == len(b.keep) < full.shape[1]
    torch.testing.assert_close(kept[0], full[0, b.keep], rtol=1e-5, atol=1e-5)
    ref = F.cross_entropy(full[0, :-1], b.labels[0, 1:], reduction="sum")
    assert validation.loss_sum(model, b).item() == pytest.approx(ref.item(), rel=1e-5)


def test_target_count_matches_loss_total_count_and_bpb_of_mean():
    split, model = make_split(), tiny_model()
    split.target_bytes = np.arange(len(split), dtype=np.int64) + 5
    for limit in (0, 4):
        total, count = validation.loss_total(model, split, 3, 0, limit)
        assert validation.target_count(split, limit) == count > 0
        bpb = validation.bpb_of_mean(total / count, split, limit)
        assert bpb == pytest.approx(total / math.log(2) / validation.target_bytes(split, limit))
