"""`train.<model>.dtype: auto` (smolforge/core/precision.py): bf16 only where the CPU has
bf16 instructions and a bf16 matmul measures clearly faster; a set dtype is kept."""

from __future__ import annotations

import math

import pytest
import torch

from smolforge.core import precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_set_dtype_is_kept(dtype):
    assert precision.choose(dtype, CPU, 64) == (dtype, "set in params")


def test_auto_without_bf16_instructions_is_float32(monkeypatch):
    monkeypatch.setattr(precision, "has_bf16_instructions", lambda: False)
    monkeypatch.setattr(precision, "matmul_speedup", lambda width: pytest.fail("nothing to measure"))
    dtype, why = precision.choose("auto", CPU, 64)
    assert dtype == "float32" and "no bf16 instructions" in why


@pytest.mark.parametrize("ratio, want", [(2.3, "bfloat16"), (1.29, "float32"), (0.55, "float32")])
def test_auto_follows_the_measured_ratio(monkeypatch, ratio, want):
    monkeypatch.setattr(precision, "has_bf16_instructions", lambda: True)
    monkeypatch.setattr(precision, "matmul_speedup", lambda width: ratio)
    dtype, why = precision.choose("auto", CPU, 64)
    assert dtype == want and f"{ratio:.2f}x" in why


def test_the_probe_measures_a_ratio():
    r = precision.matmul_speedup(32, rounds=1)
    assert math.isfinite(r) and r > 0
