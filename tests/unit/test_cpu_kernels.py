"""smolforge/core/cpu_kernels: each fused kernel against the torch ops it replaces
(forward and backward, on shapes that leave vector tails), the training Llama's
autograd functions with and without them, and the build: cached per machine, atomic,
and a clear fall-back to torch ops without a compiler or when the build fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from smolforge.core import cpu_kernels, llama

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kernels():
    """torch.ops.smolforge. Where a C++ compiler exists, CI must have built them: a source
    that does not compile fails the suite there instead of skipping."""
    if not cpu_kernels.load():
        if cpu_kernels.compiler() is not None and os.environ.get("CI") == "true":
            pytest.fail("the CPU kernels did not build under CI (see the log for the compiler's error)")
        pytest.skip("no CPU kernels on this machine (no C++ compiler)")
    return torch.ops.smolforge


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("F_", [1, 16, 37, 384])
def test_swiglu_forward_and_backward(kernels, F_):
    h, g = randn(3, 5, 2 * F_), randn(3, 5, F_, seed=1)
    gate, up = h.chunk(2, -1)
    assert torch.allclose(kernels.swiglu(h), F.silu(gate) * up, atol=1e-6, rtol=1e-6)
    ref = h.clone().requires_grad_()
    (F.silu(ref.chunk(2, -1)[0]) * ref.chunk(2, -1)[1]).backward(g)
    got = kernels.swiglu_backward_(h.clone(), g)
    assert torch.allclose(got, ref.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("C", [1, 20, 128])
def test_rms_scale_forward_and_backward(kernels, C):
    x, g = randn(4, 7, C) * 3, randn(4, 7, C, seed=1)
    y, rstd = kernels.rms_scale(x, 1e-5)
    ref = x.clone().requires_grad_()
    want = F.rms_norm(ref, (C,), None, 1e-5)
    assert torch.allclose(y, want, atol=1e-6, rtol=1e-5)
    assert rstd.shape == (4, 7, 1)
    want.backward(g)
    assert torch.allclose(kernels.rms_scale_backward(g, y, rstd), ref.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("H", "KV", "B", "T", "D", "Bc"),
    [
        (1, 1, 1, 1, 8, 1),
        (2, 2, 3, 7, 8, 1),
        (4, 4, 2, 33, 32, 2),
        (4, 2, 2, 96, 40, 1),
        (2, 1, 1, 300, 16, 1),
    ],
)
def test_attention_is_rope_then_causal_sdpa(kernels, H, KV, B, T, D, Bc):
    """The fused RoPE + attention against RoPE's complex-number rotation and SDPA's causal
    attention: output (B, T, H D) and the gradient of qkv, for grouped KV heads, per-row
    positions (Bc = B), and rows and heads that leave vector tails."""
    qkv = randn(B, T, (H + 2 * KV) * D)
    angles = torch.arange(T)[None, :, None, None].float() * randn(Bc, 1, 1, D // 2, seed=1).abs()
    cos, sin = angles.cos(), angles.sin()
    dy = randn(B, T, H * D, seed=3)
    mine, ref = qkv.clone().requires_grad_(), qkv.clone().requires_grad_()
    y = llama.KernelAttention.apply(mine, *llama.kernel_tables(cos, sin), H, KV)
    q, k, v = llama.RoPE.apply(ref, torch.complex(cos, sin), H, KV)  # (H or KV, B, T, D)
    k, v = k.repeat_interleave(H // KV, 0), v.repeat_interleave(H // KV, 0)
    want = F.scaled_dot_product_attention(*(t.transpose(0, 1) for t in (q, k, v)), is_causal=True)
    want = want.transpose(1, 2).reshape(B, T, H * D)
    assert y.shape == want.shape and (y - want).abs().max().item() < 1e-5
    y.backward(dy)
    want.backward(dy)
    assert (mine.grad - ref.grad).abs().max().item() < 1e-5


@pytest.mark.parametrize(("D", "Bc"), [(8, 1), (32, 1), (32, 2), (6, 2)])
def test_rope_forward_and_backward(kernels, D, Bc):
    """The kernel's rotation and layout against RoPE's complex-number version, for heads
    narrower than a vector (scalar tail) and per-row positions (Bc = B)."""
    B, T, H, KV = 2, 9, 4, 2
    qkv = randn(B, T, (H + 2 * KV) * D)
    angles = torch.arange(T)[None, :, None, None].float() * randn(Bc, 1, 1, D // 2, seed=1).abs()
    cos, sin = angles.cos(), angles.sin()
    want = llama.RoPE.apply(qkv, torch.complex(cos, sin), H, KV)
    got = llama.RoPEKernel.apply(qkv, *llama.kernel_tables(cos, sin), H, KV)
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
    grads = [randn(*t.shape, seed=i) for i, t in enumerate(want)]
    ref = qkv.clone().requires_grad_()
    torch.autograd.backward(llama.RoPE.apply(ref, torch.complex(cos, sin), H, KV), grads)
    mine = qkv.clone().requires_grad_()
    torch.autograd.backward(llama.RoPEKernel.apply(mine, *llama.kernel_tables(cos, sin), H, KV), grads)
    assert torch.allclose(mine.grad, ref.grad, atol=1e-6)


def test_the_llama_computes_the_same_with_and_without_kernels(kernels):
    """A training step's logits and every gradient, kernels vs torch ops (the
    transformers equivalence of both paths is in test_llama_fast.py)."""
    from tests.unit.test_llama_fast import inputs, pair

    model, _ = pair()
    ids = inputs(B=2, T=24)
    results = []
    for paused in (False, True):
        model.zero_grad(set_to_none=True)
        if paused:
            with cpu_kernels.paused():
                logits = model(input_ids=ids).logits
                F.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
        else:
            logits = model(input_ids=ids).logits
            F.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = results
    assert (a - b).abs().max().item() < 1e-5
    for name in ga:
        assert ((ga[name] - gb[name]).norm() / gb[name].norm()).item() < 1e-5, name


def test_other_dtypes_take_torch_ops(kernels):
    assert cpu_kernels.usable(torch.zeros(2))
    assert not cpu_kernels.usable(torch.zeros(2, dtype=torch.float64))
    assert not cpu_kernels.usable(torch.zeros(2, dtype=torch.bfloat16))
    with cpu_kernels.paused():
        assert not cpu_kernels.usable(torch.zeros(2))


def test_the_cache_key_follows_the_source(tmp_path, monkeypatch):
    cxx = cpu_kernels.compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("SMOLFORGE_KERNEL_CACHE", str(tmp_path))
    first = cpu_kernels.library_path(cxx)
    assert first.parent == tmp_path and first == cpu_kernels.library_path(cxx)
    edited = tmp_path / "edited.cpp"
    edited.write_text(cpu_kernels.SOURCE.read_text() + "\n// edited\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", edited)
    assert cpu_kernels.library_path(cxx) != first


def load_in_subprocess(env: dict[str, str]) -> subprocess.CompletedProcess:
    """A fresh interpreter that loads the kernels and runs a Llama training step."""
    code = (
        "import logging, torch, torch.nn.functional as F\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
        "from smolforge.core import cpu_kernels\n"
        "from tests.unit.test_llama_fast import inputs, pair\n"
        "print('loaded', cpu_kernels.load())\n"
        "model, _ = pair(); ids = inputs()\n"
        "F.cross_entropy(model(input_ids=ids).logits.flatten(0, 1), ids.flatten()).backward()\n"
        "print('trained')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"CXX": "/nonexistent/c++"}, "no C++ compiler"),
        ({"CXX": "false"}, "could not build or load the CPU kernels"),
        ({"SMOLFORGE_CPU_KERNELS": "0"}, "CPU kernels off"),
    ],
)
def test_without_kernels_training_runs_on_torch_ops(tmp_path, env, why):
    done = load_in_subprocess({"SMOLFORGE_KERNEL_CACHE": str(tmp_path), **env})
    assert done.returncode == 0, done.stderr
    assert "loaded False" in done.stdout and "trained" in done.stdout
    assert why in done.stderr
    assert list(tmp_path.iterdir()) == []  # a failed build leaves nothing behind


@pytest.mark.slow
def test_built_once_per_machine(tmp_path):
    """A fresh cache: the first process builds (about 10 s), the next loads its file."""
    if cpu_kernels.compiler() is None:
        pytest.skip("no C++ compiler")
    env = {"SMOLFORGE_KERNEL_CACHE": str(tmp_path)}
    first = load_in_subprocess(env)
    assert first.returncode == 0, first.stderr
    assert "loaded True" in first.stdout and "building the CPU kernels" in first.stderr
    (built,) = tmp_path.iterdir()
    assert built.suffix == ".so"
    second = load_in_subprocess(env)
    assert "loaded True" in second.stdout and "building" not in second.stderr
    assert list(tmp_path.iterdir()) == [built]
