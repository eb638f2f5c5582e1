"""The chat finetune's training step: the step train ran before (padded batches, logits at
every position) against today's step and the levers of docs/performance.md.

Every side runs the pipeline's own step (smolforge.core.trainloop.next_step and step: the
seeded sampler, the batch, loss over targets, grad clip, AdamW) on its own copy of the
default chat model (train.chat of params.yaml: SmolLM2-135M-Instruct from the embedded
GGUF with LoRA adapters), from the same init and on the same batches:

- full logits: examples right-padded to the longest of the batch, logits at every
  position (train's step before `validation.TargetLoss`; the baseline of every row);
- target logits: the same padded batches, logits only at target positions (train's step);
- packed: the examples back to back in one row, attention confined to each example;
- bf16 autocast and bf16 base: the target-logits step under bf16 autocast, the frozen base
  weights kept in float32 or stored in bf16 (the adapters stay float32), only where the
  CPU has bf16 instructions (AVX512-BF16 or AMX; a CUDA device counts too): on an
  AVX2-only CPU (an AMD EPYC, Zen 3) a bf16 matmul at these shapes ran 4-7x slower than
  float32, and one bf16 step took minutes;
- no LoRA dropout: what the adapters' dropout costs (a different training: not a lever
  that keeps the loss curve, reported so its price is known).

Tokens per second count real tokens (pads not counted), so the sides are comparable. The
data is the real data/pretokenize/chat when it has been built, else chat-shaped synthetic
examples (lengths and target shares of the default corpus).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import Row, interleave, median, paired_ratio
from smolforge.core import precision, pretrained, tokens, trainloop
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


class FullLogits(torch.nn.Module):
    """The loss train computed before `validation.TargetLoss`: logits at every position of
    the padded batch, then cross-entropy over the targets."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, labels, position_ids=None, attention_mask=None) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, position_ids=position_ids).logits  # (B, T, V)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="sum")


def frozen_to_bf16(model) -> None:
    """Store the frozen base weights in bf16 (the trainable adapters stay float32)."""
    for q in model.parameters():
        if not q.requires_grad:
            q.data = q.data.to(torch.bfloat16)


@dataclass(frozen=True)
class Lever:
    packed: bool = False
    full_logits: bool = False
    dtype: str = "float32"  # the step's autocast
    bf16_base: bool = False
    dropout: float | None = None  # None: train.chat.lora.dropout


class Side:
    """The pipeline's step on its own copy of the LoRA model, sampler and optimizer."""

    def __init__(self, base, split, p: TrainParams, lever: Lever):
        lora = p.lora if lever.dropout is None else dataclasses.replace(p.lora, dropout=lever.dropout)
        self.model = add_lora(copy.deepcopy(base), lora, p.seed)
        self.model.train()
        if lever.bf16_base:
            frozen_to_bf16(self.model)
        self.fwd = FullLogits(self.model) if lever.full_logits else trainloop.wrap(self.model, CPU, False)
        self.split, self.p, self.lever = split, p, lever
        self.opt = trainloop.optimizer(self.model, p.lr, p.betas, p.weight_decay)
        lengths = np.diff(split.offsets)
        self.sampler = Sampler(len(split), p.batch_size, p.seed, lengths=lengths, bucket=p.length_buckets)
        self.step_i, self.losses = 0, []
        # each side draws its dropout masks from its own stream, the same seed for all, so
        # sides with the same batch shapes draw the same masks and their losses compare
        self.rng = torch.Generator().manual_seed(p.seed).get_state()

    def block(self, n_steps: int) -> float:
        """Run `n_steps` steps; real tokens per second."""
        outside = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        n_tokens, t0 = 0, time.perf_counter()
        for _ in range(n_steps):
            s = trainloop.next_step(self.split, self.sampler, self.p.grad_accum, 0, CPU, self.lever.packed)
            lr = lr_at(self.step_i, self.p)
            loss = trainloop.step(self.fwd, self.model, self.opt, s, lr, self.p.grad_clip, self.lever.dtype, CPU)
            self.losses.append(sum(loss) / s.n_targets)
            self.step_i += 1
            n_tokens += s.n_tokens
        rate = n_tokens / (time.perf_counter() - t0)
        self.rng = torch.get_rng_state()
        torch.set_rng_state(outside)
        return rate


LEVERS = {
    "full logits": Lever(full_logits=True),
    "target logits": Lever(),
    "packed": Lever(packed=True),
    "no LoRA dropout": Lever(dropout=0.0),
}
BF16_LEVERS = {
    "bf16 autocast": Lever(dtype="bfloat16"),
    "bf16 base": Lever(dtype="bfloat16", bf16_base=True),
}


def run(quick: bool) -> list[Row]:
    p = load_params("train.chat", TrainParams, ROOT / "params.yaml")
    torch.set_num_threads(p.threads)
    rounds = 3 if quick else 5  # a step of the default chat model takes seconds
    levers = LEVERS | (BF16_LEVERS if precision.has_bf16_instructions() else {})
    with tempfile.TemporaryDirectory() as tmp:
        split, source = token_split(Path(tmp))
        t0 = time.perf_counter()
        base = pretrained.load_model(p.base, "float32")
        load_s = time.perf_counter() - t0
        sides = {name: Side(base, split, p, lever) for name, lever in levers.items()}
        del base
        for side in sides.values():  # warm-up: one step each
            side.block(1)
        got = interleave({name: (lambda s=side: s.block(1)) for name, side in sides.items()}, rounds)

    def loss_note(name: str) -> str:
        la, lb = sides[name].losses, sides["full logits"].losses
        diff = max(abs(x - y) for x, y in zip(la, lb))
        return f"after {len(la)} steps: largest step-loss difference {diff:.2e} ({la[-1]:.4f} vs {lb[-1]:.4f})"

    shape = (
        f"train.chat: LoRA r={p.lora.r}, batch {p.batch_size}, {p.threads} threads; data: {source}; "
        f"base load {load_s:.1f} s"
    )
    rows = []
    for name in levers:
        if name == "full logits":
            continue
        target = ">= 2.0" if name == train_step_name(p) else ""
        ratio = round(paired_ratio(got, name, "full logits"), 3)
        rows.append(
            Row(
                f"chat finetune step: {name} vs full logits (the old step)",
                round(median(got[name])),
                round(median(got["full logits"])),
                "tok/s",
                ratio,
                target,
                None if not target else ratio >= float(target.split()[1]),
                f"{shape}; {loss_note(name)}",
                {name: got[name], "full logits": got["full logits"]},
            )
        )
    return rows


def train_step_name(p: TrainParams) -> str:
    """The side that is what train runs with these params on this machine."""
    dtype, _ = precision.choose(p.dtype, CPU.device, 576)  # SmolLM2-135M's width
    return "bf16 autocast" if dtype == "bfloat16" else "target logits"
