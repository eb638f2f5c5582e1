"""smolforge.chat.evaluation: summary's bits per byte and the per-source figures."""

from __future__ import annotations

import math

import pytest

from smolforge.chat.evaluation import Result, per_source, summary

LN2 = math.log(2)


def result(with_bytes: bool = True) -> Result:
    r = Result(sources=["essays", "qa", "essays"], target_bytes=[10, 4, 6] if with_bytes else None)
    r.example_sums = {"finetune": [(2.0, 4), (1.0, 1), (3.0, 2)], "base": [(4.0, 4), (1.5, 1), (5.0, 2)]}
    r.sums = {m: (sum(s for s, _ in v), sum(n for _, n in v)) for m, v in r.example_sums.items()}
    return r


def test_summary_has_bits_per_byte_for_both_models():
    out = summary(result())
    assert out["val_target_bytes"] == 20
    assert out["val_bpb"] == pytest.approx(6.0 / LN2 / 20, abs=1e-6)
    assert out["base_val_bpb"] == pytest.approx(10.5 / LN2 / 20, abs=1e-6)
    assert out["val_bpb_change"] == pytest.approx(out["val_bpb"] - out["base_val_bpb"], abs=2e-6)
    assert "val_bpb" not in summary(result(with_bytes=False))


def test_per_source_losses_and_bpb():
    out = per_source(result())
    assert sorted(out) == ["essays", "qa"]
    e = out["essays"]
    assert (e["examples"], e["targets"], e["target_bytes"]) == (2, 6, 16)
    assert e["val_loss"] == pytest.approx(5.0 / 6, abs=1e-6)
    assert e["base_val_loss"] == pytest.approx(9.0 / 6, abs=1e-6)
    assert e["val_bpb"] == pytest.approx(5.0 / LN2 / 16, abs=1e-6)
    assert out["qa"]["base_val_bpb"] == pytest.approx(1.5 / LN2 / 4, abs=1e-6)
    assert per_source(Result()) == {}
