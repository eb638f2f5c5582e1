"""The scratch Llama against a GPT of nanoGPT's shape: training tokens per second.

The GPT here is written for this benchmark from nanoGPT's published description (a GPT-2
decoder: learned token and position embeddings, pre-LayerNorm blocks without biases, one
fused query/key/value projection, causal scaled-dot-product attention, a 4x GELU MLP, the
LM head tied to the token embedding); no nanoGPT code is copied. At the default nets shape
(2 layers, width 128, 4 heads, vocabulary 272, context 256) both models have 461,440
parameters.

The Llama runs as stage train runs it: with the fused CPU kernels of
smolforge/core/cpu_kernels.py where they build (a C++ compiler), and its torch ops
otherwise; a twin on torch ops alone runs beside it, so the kernels' share shows.

Every side runs the same bare step (forward, cross-entropy over every position, backward,
AdamW) on the same random batches of `train.nets` size (64 x 96 tokens), float32, in
alternating rounds in one process, with freed memory kept in the heap as stage train
keeps it (smolforge/core/heap.py; SMOLFORGE_KEEP_FREED=0 measures glibc's defaults). The
Llama is the pipeline's own training model (`smolforge.core.model.build`:
smolforge.core.llama, as stage train builds it); transformers' `LlamaForCausalLM` with
the same weights runs beside it, so the gain over it shows. Without
--quick, both models also run under torch.compile (as `train.<model>.compile: true` runs
them; it needs a C compiler).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common import Row, interleave, median, meets, paired_ratio
from smolforge.core import cpu_kernels, heap, trainloop
from smolforge.core import model as model_lib
from smolforge.core.params import load_params
from smolforge.core.train import TrainParams

ROOT = Path(__file__).resolve().parent.parent
VOCAB, T = 272, 96  # the nets vocabulary; a typical packed nets line


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1 = nn.LayerNorm(dim, bias=False)
        self.c_attn = nn.Linear(dim, 3 * dim, bias=False)  # q, k, v in one matmul
        self.c_proj = nn.Linear(dim, dim, bias=False)
        self.ln_2 = nn.LayerNorm(dim, bias=False)
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.fc_proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T_, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T_, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, C / H)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T_, C))
        return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x))))


class GPT(nn.Module):
    """A GPT-2-style decoder of nanoGPT's shape; returns logits (B, T, V)."""

    def __init__(self, vocab: int, context: int, dim: int, n_layers: int, n_heads: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(dim, bias=False)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() >= 2:  # GPT-2's init: N(0, 0.02), residual projections scaled by depth
                std = 0.02 / math.sqrt(2 * n_layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class Side:
    """A bare training step on one model over a fixed list of batches (torch_ops: with
    the CPU kernels paused)."""

    def __init__(
        self, model: nn.Module, logits, p: TrainParams, batches: list[torch.Tensor], torch_ops=False
    ):
        self.model, self.logits, self.batches, self.i = model, logits, batches, 0
        self.opt = trainloop.optimizer(model, p.lr, p.betas, p.weight_decay)
        self.torch_ops = torch_ops

    def block(self, n_steps: int) -> float:
        if self.torch_ops:
            with cpu_kernels.paused():
                return self.steps(n_steps)
        return self.steps(n_steps)

    def steps(self, n_steps: int) -> float:
        n_tokens, t0 = 0, time.perf_counter()
        for _ in range(n_steps):
            x = self.batches[self.i % len(self.batches)]
            logits = self.logits(self.model, x[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            n_tokens += x[:, :-1].numel()
            self.i += 1
        return n_tokens / (time.perf_counter() - t0)


def run(quick: bool) -> list[Row]:
    p = load_params("train.nets", TrainParams, ROOT / "params.yaml")
    s = p.model
    torch.set_num_threads(p.threads)
    kept = heap.keep_freed_memory()  # as stage train runs; both sides share the process's heap
    kernels = cpu_kernels.load()  # as stage train loads them (built on first use)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, VOCAB, (p.batch_size, T + 1), generator=g) for _ in range(8)]
    llama = model_lib.build(model_lib.llama_config(s, VOCAB, 1, 2, 0), p.seed)
    hf = model_lib.to_hf(model_lib.build(model_lib.llama_config(s, VOCAB, 1, 2, 0), p.seed))
    torch.manual_seed(p.seed)
    gpt = GPT(VOCAB, s.max_seq_len, s.dim, s.n_layers, s.n_heads)
    n_llama, n_gpt = model_lib.n_params(llama), sum(q.numel() for q in gpt.parameters())
    llama_logits = lambda m, x: m(input_ids=x).logits  # noqa: E731
    gpt_logits = lambda m, x: m(x)  # noqa: E731
    sides = {
        "llama": Side(llama, llama_logits, p, batches),
        "hf": Side(hf, llama_logits, p, batches),
        "gpt": Side(gpt, gpt_logits, p, batches),
    }
    if kernels:  # the same Llama (own weights) on torch ops alone
        twin = model_lib.build(model_lib.llama_config(s, VOCAB, 1, 2, 0), p.seed)
        sides["llama torch ops"] = Side(twin, llama_logits, p, batches, torch_ops=True)
    if not quick:  # compiled twins (their own weights: training mutates them), as trainloop.wrap compiles
        twin = model_lib.build(model_lib.llama_config(s, VOCAB, 1, 2, 0), p.seed)
        torch.manual_seed(p.seed)
        gpt_twin = GPT(VOCAB, s.max_seq_len, s.dim, s.n_layers, s.n_heads)
        sides["llama compiled"] = Side(torch.compile(twin, dynamic=True), llama_logits, p, batches)
        sides["gpt compiled"] = Side(torch.compile(gpt_twin, dynamic=True), gpt_logits, p, batches)
    k, rounds = (3, 6) if quick else (3, 14)
    for side in sides.values():
        side.block(2)  # warm-up (and compiling)
    got = interleave({name: (lambda sd=side: sd.block(k)) for name, side in sides.items()}, rounds)
    heap_note = "freed memory kept (as train runs)" if kept else "glibc malloc defaults"
    setting = f"train.nets shape, batch {p.batch_size}x{T}, float32, {p.threads} threads, {heap_note}"
    shape = f"{s.n_layers} layers, width {s.dim}, {s.n_heads} heads"

    def row(a: str, b: str, name: str, target: str, note: str) -> Row:
        ratio = round(paired_ratio(got, a, b), 3)
        medians, samples = (round(median(got[a])), round(median(got[b]))), {a: got[a], b: got[b]}
        return Row(name, *medians, "tok/s", ratio, target, meets(ratio, target), note, samples)

    params = f"params {n_llama:,} (Llama) vs {n_gpt:,} (GPT)"
    ops = "CPU kernels" if kernels else "torch ops (the CPU kernels did not build here)"
    table = [
        ("llama", "gpt", f"scratch Llama vs nanoGPT-shaped GPT ({setting})", ">= 1.0", f"{shape}; {params}; {ops}"),
        ("llama torch ops", "gpt", f"scratch Llama on torch ops alone vs nanoGPT-shaped GPT ({setting})", "",
         "SMOLFORGE_CPU_KERNELS=0, or no C++ compiler"),
        ("llama", "llama torch ops", f"scratch Llama, CPU kernels vs torch ops ({setting})", "",
         "smolforge/core/cpu_kernels.py: fused RMSNorm, RoPE + attention, SwiGLU"),
        ("hf", "gpt", f"HF LlamaForCausalLM vs nanoGPT-shaped GPT ({setting})", "",
         "transformers' own Llama with the same weights: what training ran before smolforge.core.llama"),
        ("llama compiled", "gpt compiled", f"scratch Llama vs nanoGPT-shaped GPT, both torch.compile ({setting})",
         "", "dynamic=True, as train.<model>.compile runs them; compiled, the Llama runs inductor's code, not the kernels"),
        ("llama compiled", "gpt", f"scratch Llama under torch.compile vs nanoGPT-shaped GPT eager ({setting})",
         "", "the pipeline with compile: true against the GPT as written"),
    ]  # fmt: skip
    return [row(*r) for r in table if r[0] in got and r[1] in got]
