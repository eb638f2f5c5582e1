"""smolforge.core.checkpoint: save/load round-trip, fingerprint matching, unreadable states
ignored, and the trainable tensors a state holds."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from smolforge.core import checkpoint


def make_state(fp: str) -> dict:
    torch.manual_seed(0)
    return {
        "fingerprint": fp,
        "step": 120,
        "model": {"w": torch.randn(4, 3), "b": torch.zeros(3)},
        "optimizer": {
            "state": {0: {"exp_avg": torch.ones(2)}},
            "param_groups": [{"lr": 3e-4, "params": [0]}],
        },
        "rng": {"torch": torch.get_rng_state(), "python": [1, 2, 3]},
        "data": {"epoch": 2, "index": 64},
    }


def test_save_load_round_trip(tmp_path):
    state = make_state("abc")
    checkpoint.save(tmp_path, state)
    assert os.listdir(tmp_path) == [checkpoint.CKPT]  # no temp file left
    got = checkpoint.load(tmp_path, "abc")
    assert got is not None
    assert got["step"] == 120 and got["data"] == {"epoch": 2, "index": 64}
    assert torch.equal(got["model"]["w"], state["model"]["w"])
    assert torch.equal(got["rng"]["torch"], state["rng"]["torch"])
    assert got["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]


def test_save_replaces_previous_state(tmp_path):
    checkpoint.save(tmp_path, {**make_state("abc"), "step": 1})
    checkpoint.save(tmp_path, {**make_state("abc"), "step": 2})
    assert checkpoint.load(tmp_path, "abc")["step"] == 2


def test_missing_state_is_none(tmp_path):
    assert checkpoint.load(tmp_path / "nope", "abc") is None


def test_other_fingerprint_is_none(tmp_path, caplog):
    checkpoint.save(tmp_path, make_state("abc"))
    with caplog.at_level(logging.INFO, logger="smolforge.core.checkpoint"):
        assert checkpoint.load(tmp_path, "abd") is None
    assert "from other params or data" in caplog.text


def test_corrupted_state_is_none(tmp_path, caplog):
    checkpoint.save(tmp_path, make_state("abc"))
    path = tmp_path / checkpoint.CKPT
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # torn write
    with caplog.at_level(logging.WARNING, logger="smolforge.core.checkpoint"):
        assert checkpoint.load(tmp_path, "abc") is None
    assert "ignoring unreadable checkpoint" in caplog.text
    path.write_bytes(b"not a checkpoint at all")
    assert checkpoint.load(tmp_path, "abc") is None


def test_state_with_pickled_code_is_refused(tmp_path):
    # weights_only=True: an arbitrary object is not loaded (and never executed)
    torch.save({"fingerprint": "abc", "obj": logging.getLogger("x")}, tmp_path / checkpoint.CKPT)
    assert checkpoint.load(tmp_path, "abc") is None


def test_state_without_fingerprint_is_none(tmp_path):
    checkpoint.save(tmp_path, {"step": 1})
    assert checkpoint.load(tmp_path, "abc") is None


def test_foreign_torch_file_is_none(tmp_path):
    # a readable torch file that is not a state dict (e.g. a bare tensor or list)
    torch.save(torch.zeros(3), tmp_path / checkpoint.CKPT)
    assert checkpoint.load(tmp_path, "abc") is None
    torch.save(["abc"], tmp_path / checkpoint.CKPT)
    assert checkpoint.load(tmp_path, "abc") is None


def test_fingerprint(tmp_path):
    a, b = tmp_path / "train.bin", tmp_path / "meta.json"
    a.write_bytes(b"\x01\x02\x03")
    b.write_text('{"vocab_size": 272}')
    params = {"lr": 2e-3, "model": {"dim": 128}}
    fp = checkpoint.fingerprint(params, [a, b])
    assert len(fp) == 64
    assert checkpoint.fingerprint({"model": {"dim": 128}, "lr": 2e-3}, [a, b]) == fp  # key order
    assert checkpoint.fingerprint({**params, "lr": 1e-3}, [a, b]) != fp
    assert checkpoint.fingerprint(params, [a]) != fp
    a.write_bytes(b"\x01\x02\x04")
    assert checkpoint.fingerprint(params, [a, b]) != fp
    a.write_bytes(b"\x01\x02\x03")
    assert checkpoint.fingerprint(params, [a, b]) == fp


def test_fingerprint_includes_file_names(tmp_path):
    (tmp_path / "x").write_bytes(b"same")
    (tmp_path / "y").write_bytes(b"same")
    assert checkpoint.fingerprint({}, [tmp_path / "x"]) != checkpoint.fingerprint({}, [tmp_path / "y"])


def half_frozen() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)  # a frozen base, as under LoRA
    return model


def test_trainable_state_holds_the_trained_tensors_only():
    state = checkpoint.trainable_state(half_frozen())
    assert sorted(state) == ["1.bias", "1.weight", "2.bias", "2.weight"]


def test_load_trainable_restores_the_trained_tensors_and_leaves_the_frozen_ones(tmp_path):
    src, dst = half_frozen(), half_frozen()
    with torch.no_grad():
        for q in src.parameters():
            q.add_(1.0)
    checkpoint.save(tmp_path, {"fingerprint": "abc", "model": checkpoint.trainable_state(src)})
    checkpoint.load_trainable(dst, checkpoint.load(tmp_path, "abc")["model"])
    assert torch.equal(dst[2].weight, src[2].weight) and torch.equal(dst[1].bias, src[1].bias)
    assert not torch.equal(dst[0].weight, src[0].weight)  # frozen: not in the state, not touched


def test_load_trainable_refuses_a_state_of_other_tensors():
    model = half_frozen()
    state = checkpoint.trainable_state(model)
    with pytest.raises(ValueError, match="other tensors than this model trains"):
        checkpoint.load_trainable(model, {k: v for k, v in state.items() if k != "2.bias"})
    with pytest.raises(ValueError, match="other tensors than this model trains"):
        checkpoint.load_trainable(model, {**state, "0.weight": torch.zeros(4, 3)})
