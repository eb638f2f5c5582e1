"""The machine's measured matmul peak, fp32 and bf16 (bench.trainer measures its MFU
denominator with the same probe, in the same rounds as the trainer).

A square (N, N) @ (N, N) matmul costs 2 N^3 FLOPs; N = 1024 is big enough for the
BLAS kernels to run at full speed and small enough to stay in a 2-core budget.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.common import Row, interleave, median, timed

ROOT = Path(__file__).resolve().parent.parent


def gflops(dtype: torch.dtype, n: int, seconds: float) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    reps = max(1, int(seconds / timed(lambda: torch.mm(a, b))))  # the first call also warms up

    def work() -> None:
        for _ in range(reps):
            torch.mm(a, b)

    return 2 * n**3 * reps / timed(work) / 1e9


def run(quick: bool) -> list[Row]:
    """The matmul row: bf16 vs fp32 at train.nets' threads. A peak is what the machine
    reaches when nothing interferes, so it is the best round, not the median (the note
    gives the medians too)."""
    from smolforge.core.params import load_params
    from smolforge.core.train import TrainParams

    threads = load_params("train.nets", TrainParams, ROOT / "params.yaml").threads
    torch.set_num_threads(threads)
    n, seconds, rounds = 1024, 0.25, 5 if quick else 9
    got = interleave(
        {
            "float32": lambda: gflops(torch.float32, n, seconds),
            "bfloat16": lambda: gflops(torch.bfloat16, n, seconds),
        },
        rounds,
    )
    peak = {k: max(v) for k, v in got.items()}
    med = {k: median(v) for k, v in got.items()}
    row = Row(
        name=f"matmul peak, {n}x{n}, {threads} threads (bf16 vs fp32)",
        value=round(peak["bfloat16"], 1),
        baseline=round(peak["float32"], 1),
        unit="GFLOP/s",
        ratio=round(peak["bfloat16"] / peak["float32"], 2),
        target="",
        ok=None,
        note=f"best of {rounds} rounds (medians {med['bfloat16']:.0f} and {med['float32']:.0f})",
        samples=got,
    )
    return [row]
