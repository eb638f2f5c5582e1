"""The chat finetune's training step: today's padded step against the packed one, and bf16.

Every side runs the pipeline's own step (smolforge.core.trainloop.next_step and step: the
seeded sampler, the batch, loss over targets, grad clip, AdamW) on its own copy of the
default chat model (train.chat of params.yaml: SmolLM2-135M-Instruct from the embedded
GGUF with LoRA adapters), from the same init and on the same batches:

- padded: examples right-padded to the longest of the batch, logits at every position
  (train's step);
- packed: the same examples back to back in one row, attention confined to each example,
  logits only at target positions (`trainloop.next_step(packed=True)`; not train's default);
- packed bf16: the packed step under bf16 autocast (`train.chat.dtype: bfloat16`), only
  where the CPU has bf16 instructions (AVX512-BF16 or AMX; a CUDA device counts too): on
  an AVX2-only CPU (the AMD EPYC of 2026-12-07, Zen 3) a bf16 matmul at these shapes ran
  4-7x slower than float32, and one bf16 step took minutes.

Tokens per second count real tokens (pads not counted), so the sides are comparable. The
data is the real data/pretokenize/chat when it has been built, else chat-shaped synthetic
examples (lengths and target shares of the default corpus).
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import Row, interleave, median, paired_ratio
from smolforge.core import pretrained, tokens, trainloop
from smolforge.core.data import Sampler
from smolforge.core.io import read_meta
from smolforge.core.params import load_params
from smolforge.core.train import TrainParams, lr_at
from smolforge.inits.lora import add_lora

ROOT = Path(__file__).resolve().parent.parent
CPU = trainloop.Dist(0, 1, torch.device("cpu"))


def token_split(tmp: Path) -> tuple[tokens.TokenSplit, str]:
    """(train split, where it came from)."""
    real = ROOT / "data/pretokenize/chat"
    if (real / "meta.json").is_file():
        meta = read_meta(real, "pretokenize", versions=(tokens.FORMAT_VERSION,))
        return tokens.read_split(real, "train", meta), str(real)
    # like the default corpus: 60-320 tokens an example, a prompt then a target reply
    rng = np.random.default_rng(0)
    examples = []
    for n in rng.integers(60, 320, size=48):
        prompt = int(n * rng.uniform(0.2, 0.6))
        ids = rng.integers(10, 49_000, size=int(n)).tolist()
        examples.append((ids, [0] * prompt + [1] * (int(n) - prompt)))
    tokens.write_split(tmp, "train", examples, np.dtype(np.uint16))
    return tokens.read_split(tmp, "train", {"dtype": "uint16", "vocab_size": 49_152}), "synthetic chat-shaped"


def has_bf16() -> bool:
    """Whether this CPU has bf16 matmul instructions (or a GPU is there)."""
    if torch.cuda.is_available():
        return True
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Side:
    """The pipeline's step on its own copy of the LoRA model, sampler and optimizer."""

    def __init__(self, model, split, p: TrainParams, packed: bool, dtype: str):
        self.model, self.split, self.p, self.packed, self.dtype = (
            copy.deepcopy(model),
            split,
            p,
            packed,
            dtype,
        )
        self.model.train()
        self.opt = trainloop.optimizer(self.model, p.lr, p.betas, p.weight_decay)
        lengths = np.diff(split.offsets)
        self.sampler = Sampler(len(split), p.batch_size, p.seed, lengths=lengths, bucket=p.length_buckets)
        self.step_i, self.losses = 0, []

    def block(self, n_steps: int) -> float:
        """Run `n_steps` steps; real tokens per second."""
        n_tokens, t0 = 0, time.perf_counter()
        for _ in range(n_steps):
            s = trainloop.next_step(self.split, self.sampler, self.p.grad_accum, 0, CPU, self.packed)
            lr = lr_at(self.step_i, self.p)
            loss = trainloop.step(self.model, self.model, self.opt, s, lr, self.p.grad_clip, self.dtype, CPU)
            self.losses.append(sum(loss) / s.n_targets)
            self.step_i += 1
            n_tokens += s.n_tokens
        return n_tokens / (time.perf_counter() - t0)


def run(quick: bool) -> list[Row]:
    p = load_params("train.chat", TrainParams, ROOT / "params.yaml")
    torch.set_num_threads(p.threads)
    rounds = 3 if quick else 6  # a step of the default chat model takes seconds
    with tempfile.TemporaryDirectory() as tmp:
        split, source = token_split(Path(tmp))
        base = pretrained.load_model(p.base, "float32")
        model = add_lora(base, p.lora, p.seed)
        torch.manual_seed(p.seed)
        sides = {
            "padded": Side(model, split, p, packed=False, dtype="float32"),
            "packed": Side(model, split, p, packed=True, dtype="float32"),
        }
        if has_bf16():
            sides["packed bf16"] = Side(model, split, p, packed=True, dtype="bfloat16")
        del model, base
        for side in sides.values():  # warm-up: one step each
            side.block(1)
        got = interleave({name: (lambda s=side: s.block(1)) for name, side in sides.items()}, rounds)

    def loss_note(a: str, b: str) -> str:
        la, lb = sides[a].losses, sides[b].losses
        diff = max(abs(x - y) for x, y in zip(la, lb))
        return (
            f"after {len(la)} steps: largest step-loss difference {diff:.2e} ({la[-1]:.4f} vs "
            f"{lb[-1]:.4f}; LoRA dropout draws differ between the layouts)"
        )

    shape = f"train.chat: LoRA r={p.lora.r}, batch {p.batch_size}, {p.threads} threads; data: {source}"
    rows = []
    for name, target in (("packed", ">= 2.0"), ("packed bf16", "")):
        if name not in sides:
            continue
        ratio = round(paired_ratio(got, name, "padded"), 3)
        rows.append(
            Row(
                f"chat finetune step: {name} vs padded float32",
                round(median(got[name])),
                round(median(got["padded"])),
                "tok/s",
                ratio,
                target,
                None if not target else ratio >= float(target.split()[1]),
                f"{shape}; {loss_note(name, 'padded')}",
                {name: got[name], "padded": got["padded"]},
            )
        )
    return rows
