"""Trainer throughput: the pipeline's real training step vs a bare loop, and CPU variants.

The trainer side runs what the training loop (smolforge/core/train.py) runs each step:
the seeded length-bucketed sampler, collate, smolforge.core.trainloop.next_step and
trainloop.step (lr schedule, loss over targets, grad clip, AdamW, loss bookkeeping).
The bare side runs forward, loss, backward, optimizer step and nothing else, on the same
model shape, dtype and batches (collated beforehand, outside the timing). Both start
from the same init and see the same batches, so the ratio is the pipeline's overhead.

The model and batch are `train.nets` of params.yaml. The data is the real
data/pretokenize/nets when it has been built, else nets-shaped synthetic examples.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench import matmul
from bench.common import Row, interleave, median, meets, paired_ratio
from smolforge.core import model as model_lib
from smolforge.core import tokens, trainloop
from smolforge.core.data import Sampler, collate
from smolforge.core.io import read_meta
from smolforge.core.params import load_params
from smolforge.core.train import TrainParams, lr_at

ROOT = Path(__file__).resolve().parent.parent
CPU = trainloop.Dist(0, 1, torch.device("cpu"))


def token_split(tmp: Path, real: Path | None) -> tuple[tokens.TokenSplit, int, str]:
    """(train split, vocab size, where it came from)."""
    real = real or ROOT / "data/pretokenize/nets"
    if (real / "meta.json").is_file():
        meta = read_meta(real, "pretokenize", versions=(tokens.FORMAT_VERSION,))
        return tokens.read_split(real, "train", meta), meta["vocab_size"], str(real)
    # nets-shaped: BOS, a net of n symbols, the answer of about n, EOS; loss on the answer
    rng = np.random.default_rng(0)
    examples = []
    for n in rng.integers(1, 22, size=20_000):
        length = 2 * int(n) + 4
        ids = rng.integers(3, 268, size=length).tolist()
        examples.append((ids, [0] * (int(n) + 2) + [1] * (length - int(n) - 2)))
    tokens.write_split(tmp, "train", examples, np.dtype(np.uint16))
    meta = {"dtype": "uint16", "vocab_size": 268}
    return tokens.read_split(tmp, "train", meta), 268, "synthetic nets-shaped examples"


class Trainer:
    """The pipeline's step on its own copy of the model, sampler and optimizer."""

    def __init__(self, model, split, p: TrainParams, dtype: str, compile_: bool = False):
        self.model, self.split, self.p, self.dtype = copy.deepcopy(model), split, p, dtype
        self.opt = trainloop.optimizer(self.model, p.lr, p.betas, p.weight_decay)
        lengths = np.diff(split.offsets)
        self.sampler = Sampler(len(split), p.batch_size, p.seed, lengths=lengths, bucket=p.length_buckets)
        self.fwd = trainloop.wrap(self.model, CPU, compile_)
        self.step_i, self.losses, self.data_s, self.total_s = 0, [], 0.0, 0.0

    def block(self, n_steps: int) -> float:
        """Run `n_steps` steps; tokens per second."""
        n_tokens, t0 = 0, time.perf_counter()
        for _ in range(n_steps):
            t_data = time.perf_counter()
            s = trainloop.next_step(self.split, self.sampler, self.p.grad_accum, 0, CPU)
            self.data_s += time.perf_counter() - t_data
            lr = lr_at(self.step_i, self.p)
            loss = trainloop.step(self.fwd, self.model, self.opt, s, lr, self.p.grad_clip, self.dtype, CPU)
            self.losses.append(sum(loss) / s.n_targets)
            self.step_i += 1
            n_tokens += s.n_tokens
        dt = time.perf_counter() - t0
        self.total_s += dt
        return n_tokens / dt


class Bare:
    """Forward, loss, backward, AdamW step: the floor the trainer is measured against."""

    def __init__(self, model, split, p: TrainParams, dtype: str, n_steps_total: int):
        self.model, self.dtype = copy.deepcopy(model), dtype
        self.opt = trainloop.optimizer(self.model, p.lr, p.betas, p.weight_decay)
        lengths = np.diff(split.offsets)
        sampler = Sampler(len(split), p.batch_size, p.seed, lengths=lengths, bucket=p.length_buckets)
        # the trainer's very batches, collated up front: no data work inside the timing
        self.steps = [
            [collate(split, sampler.next_indices(), 0) for _ in range(p.grad_accum)]
            for _ in range(n_steps_total)
        ]
        self.i = 0

    def block(self, n_steps: int) -> float:
        n_tokens, t0 = 0, time.perf_counter()
        for _ in range(n_steps):
            batches = self.steps[self.i]
            n_targets = sum(b.n_targets for b in batches)
            for b in batches:
                with trainloop.autocast(CPU, self.dtype):
                    logits = self.model(input_ids=b.input_ids).logits
                    loss = F.cross_entropy(
                        logits[:, :-1].flatten(0, 1).float(), b.labels[:, 1:].flatten(), reduction="sum"
                    )
                (loss / n_targets).backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            n_tokens += sum(b.n_tokens for b in batches)
            self.i += 1
        return n_tokens / (time.perf_counter() - t0)


def flops_per_token(p: TrainParams, n_params: int, mean_len: float) -> float:
    """PaLM's estimate for a causal decoder: 6 N (forward + backward over every weight,
    the tied head included) + 6 L C T for attention scores and values, T the mean length."""
    return 6 * n_params + 6 * p.model.n_layers * p.model.dim * mean_len


def run(quick: bool, real: Path | None = None) -> list[Row]:
    p = load_params("train.nets", TrainParams, ROOT / "params.yaml")
    torch.set_num_threads(p.threads)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        split, vocab, source = token_split(Path(tmp), real)
        config = model_lib.llama_config(p.model, vocab, 1, 2, 0)
        model = model_lib.build(config, p.seed)
        n_params = model_lib.n_params(model)
        k, rounds = (4, 6) if quick else (5, 20)  # short blocks, many rounds: robust medians

        # ---- overhead: the pipeline's step vs the bare loop, float32 (the default)
        trainer = Trainer(model, split, p, p.dtype)
        bare = Bare(model, split, p, p.dtype, k * (rounds + 1))
        trainer.block(k), bare.block(k)  # warm-up
        # the MFU denominator is measured in the same rounds: a busy machine slows both alike
        probe = lambda: matmul.gflops(getattr(torch, p.dtype), 1024, 0.1)  # noqa: E731
        sides = {"trainer": lambda: trainer.block(k), "bare": lambda: bare.block(k), "peak": probe}
        got = interleave(sides, rounds)
        t, b = median(got["trainer"]), median(got["bare"])
        rows.append(
            Row(
                f"trainer vs bare loop (train.nets, batch {p.batch_size}, {p.dtype}, {p.threads} threads)",
                round(t),
                round(b),
                "tok/s",
                round(paired_ratio(got, "trainer", "bare"), 3),
                ">= 0.95",
                meets(paired_ratio(got, "trainer", "bare"), ">= 0.95"),
                f"data: {source}; collate etc. {100 * trainer.data_s / trainer.total_s:.1f}% of trainer time",
                {"trainer": got["trainer"], "bare": got["bare"]},
            )
        )
        mean_len = float(np.diff(split.offsets).mean())
        fpt = flops_per_token(p, n_params, mean_len)
        achieved = [x * fpt / 1e9 for x in got["trainer"]]
        mfu = median(a / b for a, b in zip(achieved, got["peak"]))
        rows.append(
            Row(
                f"trainer MFU vs a {p.dtype} 1024² matmul in the same rounds",
                round(median(achieved), 1),
                round(median(got["peak"]), 1),
                "GFLOP/s",
                round(mfu, 3),
                "",
                None,
                f"{n_params:,} params, {fpt / 1e6:.2f} MFLOP per real token (6N + 6LCT), pads not counted",
                {"achieved": achieved, "peak": got["peak"]},
            )
        )

        # ---- bf16 autocast vs float32, both the pipeline's step, same init and batches
        fp32 = Trainer(model, split, p, "float32")
        bf16 = Trainer(model, split, p, "bfloat16")
        fp32.block(k), bf16.block(k)
        got = interleave({"bfloat16": lambda: bf16.block(k), "float32": lambda: fp32.block(k)}, rounds)
        a, b = median(got["bfloat16"]), median(got["float32"])
        tail = max(1, len(fp32.losses) // 4)
        la, lb = np.mean(bf16.losses[-tail:]), np.mean(fp32.losses[-tail:])
        rows.append(
            Row(
                "trainer bf16 autocast vs float32",
                round(a),
                round(b),
                "tok/s",
                round(paired_ratio(got, "bfloat16", "float32"), 3),
                "",
                None,
                f"after {len(fp32.losses)} steps: loss {la:.4f} (bf16) vs {lb:.4f} (fp32)",
                got,
            )
        )

        if not quick:
            rows += threads_row(model, split, p, k, rounds)
            rows += compile_row(model, split, p, k, rounds)
    return rows


def threads_row(model, split, p: TrainParams, k: int, rounds: int) -> list[Row]:
    """2 threads vs 1 on the same step (the machine has 2 cores)."""
    two, one = Trainer(model, split, p, p.dtype), Trainer(model, split, p, p.dtype)

    def with_threads(t: Trainer, n: int) -> float:
        torch.set_num_threads(n)
        try:
            return t.block(k)
        finally:
            torch.set_num_threads(p.threads)

    with_threads(two, 2), with_threads(one, 1)
    got = interleave(
        {"2 threads": lambda: with_threads(two, 2), "1 thread": lambda: with_threads(one, 1)}, rounds
    )
    a, b = median(got["2 threads"]), median(got["1 thread"])
    return [
        Row(
            "trainer 2 threads vs 1",
            round(a),
            round(b),
            "tok/s",
            round(paired_ratio(got, "2 threads", "1 thread"), 3),
            "",
            None,
            "",
            got,
        )
    ]


def compile_row(model, split, p: TrainParams, k: int, rounds: int) -> list[Row]:
    """torch.compile (inductor, dynamic shapes) vs eager; the compile time is reported apart."""
    eager = Trainer(model, split, p, p.dtype)
    compiled = Trainer(model, split, p, p.dtype, compile_=True)
    t0 = time.perf_counter()
    compiled.block(k)  # compiles here (and again for a new shape class, if any)
    compile_s = time.perf_counter() - t0
    compiled.block(k), eager.block(k)
    got = interleave({"compile": lambda: compiled.block(k), "eager": lambda: eager.block(k)}, rounds)
    a, b = median(got["compile"]), median(got["eager"])
    same = np.allclose(compiled.losses[:k], eager.losses[:k], rtol=1e-3)
    note = f"first {k} steps incl. compiling: {compile_s:.0f} s; losses match eager (rtol 1e-3): {same}"
    return [
        Row(
            "trainer torch.compile vs eager",
            round(a),
            round(b),
            "tok/s",
            round(paired_ratio(got, "compile", "eager"), 3),
            "",
            None,
            note,
            got,
        )
    ]
