"""Which float type a training step runs in: `train.<model>.dtype: auto` measures it.

bf16 is a lever only where the machine runs it faster. On an AMD EPYC with AVX512-BF16 a
bf16 matmul ran 2.3x the float32 rate; on an Intel Xeon without AMX, 0.55x; on an
AVX2-only EPYC, 4-7x slower (bench/matmul.py, docs/performance.md). So `auto` times both
at the model's own width before training starts and takes bf16 only when it wins by a
clear margin; the choice and the measured ratio go to the stage's timing file.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

MIN_SPEEDUP = 1.3  # bf16 autocast also casts activations and weights: a smaller gain is eaten


def has_bf16_instructions() -> bool:
    """Whether this x86 CPU has bf16 matmul instructions (AVX512-BF16 or AMX)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def matmul_speedup(width: int, rounds: int = 5) -> float:
    """bf16 over float32 matmul rate at a (512, width) x (width, 4 width) product on the
    CPU: best of `rounds` alternating timings each (about 0.1-0.5 s in all)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, width, generator=g), torch.randn(width, 4 * width, generator=g)
    pairs = {"float32": (a, b), "bfloat16": (a.bfloat16(), b.bfloat16())}
    best = dict.fromkeys(pairs, float("inf"))
    for _ in range(rounds):
        for name, (x, y) in pairs.items():
            t0 = time.perf_counter()
            for _ in range(4):
                x @ y
            best[name] = min(best[name], time.perf_counter() - t0)
    return best["float32"] / best["bfloat16"]


def choose(dtype: str, device: torch.device, width: int) -> tuple[str, str]:
    """(float32 | bfloat16, why) for the params value `dtype` (auto, float32, bfloat16)."""
    if dtype != "auto":
        return dtype, "set in params"
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ("bfloat16", "the GPU supports bf16") if ok else ("float32", "the GPU lacks bf16")
    if not has_bf16_instructions():
        return "float32", "the CPU has no bf16 instructions (AVX512-BF16 or AMX)"
    ratio = matmul_speedup(width)
    pick = "bfloat16" if ratio >= MIN_SPEEDUP else "float32"
    return pick, f"bf16 matmul ran at {ratio:.2f}x float32 here (bf16 from {MIN_SPEEDUP}x)"
