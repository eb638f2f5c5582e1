"""The scratch Llama as training runs it: the function of transformers' `LlamaForCausalLM`
(for the configs `smolforge.core.model.llama_config` makes) in fewer, cheaper ops.

The parameters are HF's, under HF's names (`model.layers.0.self_attn.q_proj.weight`, ...),
so `state_dict()` loads into transformers' `LlamaForCausalLM` and back, and what train
saves is an ordinary HF folder (`smolforge.core.model.to_hf`). Only the forward differs:

- RoPE is one complex multiply over the queries and keys together. HF rotates the pairs
  (i, i + D/2) of each head; the fused q/k/v weight lists each q and k head's rows in the
  order 0, D/2, 1, D/2 + 1, ..., so the matmul writes those pairs side by side, as complex
  numbers. Queries and keys are permuted alike, so q . k is unchanged and the permutation
  is never undone. The multiply writes the heads head-major, (H, B, T, D), so attention
  reads each one as a view; its backward writes one (B, T, 3C) gradient.
- An RMSNorm weight is folded into the weight of the matmul that reads the norm:
  (x / rms(x) * w) @ W.T == (x / rms(x)) @ (W * w).T, a (3C, C) multiply instead of a
  (B, T, C) one; the final norm's weight goes into the LM head the same way.
- x / rms(x) is one fused reduction and one multiply, with a four-op backward (aten's
  CPU rms_norm takes five passes, autograd's backward through it about ten).
- gate and up are one matmul; the SwiGLU backward overwrites that matmul's saved output
  with its own gradient, so the step allocates no (B, T, 2F) tensor for it.
- Causal attention over at most SHORT positions is two batched matmuls around an
  in-place softmax (1.7x faster than the flash kernel at T <= 128 on the CPU); longer
  rows and masks go to `F.scaled_dot_product_attention`.
- The residual adds ride on the output matmuls (`addmm`).
- On the CPU in float32, the C++ kernels of smolforge/core/cpu_kernels.py (built once
  per machine) take RMSScale, SwiGLU and, for causal rows up to KERNEL_T, RoPE and
  attention together (`KernelAttention`: head by head in cache, the causal half only,
  q and k rotated on the way in); with a mask, RoPE alone. Without them, the torch ops.

Measured side by side against a nanoGPT-shaped GPT of the same size in bench/scratch.py.

The nn.Linear submodules hold the weights, but the forward reads their `.weight` itself:
forward hooks or peft adapters on them would never run (LoRA wants `to_hf`'s model). Under
torch.compile and under autocast the same function runs in plain real ops (`plain`).
Same function as HF, other rounding: logits agree within ~1e-6 in float32, gradients
within ~1e-6 relative (tests/unit/test_llama_fast.py), not bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from smolforge.core import cpu_kernels


class CausalLMOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, V), or (B, K, V) for the positions of `logits_to_keep`


class BaseModelOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # (B, T, C), after the final norm


def check_config(config) -> None:
    """Refuse a LlamaConfig this module would not compute as HF does (ValueError)."""
    problems = []
    if config.hidden_act != "silu":
        problems.append(f"hidden_act {config.hidden_act!r} (silu only)")
    if config.attention_bias or config.mlp_bias:
        problems.append("biases (attention_bias and mlp_bias must be false)")
    if rope_parameters(config).get("rope_type", "default") != "default":
        problems.append(f"rope_type {rope_parameters(config)['rope_type']!r} (default only)")
    if getattr(config, "head_dim", None) not in (None, config.hidden_size // config.num_attention_heads):
        problems.append(f"head_dim {config.head_dim} other than hidden_size / num_attention_heads")
    if config.attention_dropout:
        problems.append(f"attention_dropout {config.attention_dropout} (0 only)")
    if problems:
        raise ValueError("smolforge.core.llama cannot run this LlamaConfig: " + "; ".join(problems))


def rope_parameters(config) -> dict:
    return getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}


# ---- the ops autograd would make expensive


class RMSScale(torch.autograd.Function):
    """x / rms(x) over the last dim, without a weight."""

    @staticmethod
    def forward(ctx, x, eps: float):
        if cpu_kernels.usable(x):  # one pass over each row
            y, rstd = torch.ops.smolforge.rms_scale(x.contiguous(), eps)
        else:  # one fused reduction (aten's _fused_rms_norm is five passes on the CPU)
            rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (..., 1)
            rstd = rstd.square_().div_(x.shape[-1]).add_(eps).rsqrt_()
            y = x * rstd  # (..., C)
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    def backward(ctx, g):
        y, rstd = ctx.saved_tensors
        # d(x * rstd(x)) = rstd * (g - y * mean(g * y))
        if cpu_kernels.usable(g):
            return torch.ops.smolforge.rms_scale_backward(g.contiguous(), y, rstd), None
        return torch.addcmul(g, y, (g * y).mean(-1, keepdim=True), value=-1).mul_(rstd), None


class RoPE(torch.autograd.Function):
    """qkv (B, T, (H + 2 KV) D), its q and k heads pair-interleaved -> q (H, B, T, D), k and
    v (KV, B, T, D), q and k rotated by rot (B or 1, T, 1, D/2) complex. Head-major, so
    that attention's batched matmuls read each head's rows as a view: the rotation writes
    the new layout in the same pass (no copy per head)."""

    @staticmethod
    def forward(ctx, qkv, rot, H: int, KV: int):
        B, T, _ = qkv.shape
        D = qkv.shape[-1] // (H + 2 * KV)
        qk = torch.view_as_complex(qkv[..., : (H + KV) * D].unflatten(-1, (H + KV, D // 2, 2)))
        out = qkv.new_empty(H + 2 * KV, B, T, D)
        torch.mul(qk.permute(2, 0, 1, 3), rot.permute(2, 0, 1, 3), out=pairs(out[: H + KV]))
        out[H + KV :].copy_(qkv[..., (H + KV) * D :].unflatten(-1, (KV, D)).permute(2, 0, 1, 3))
        ctx.save_for_backward(rot)
        ctx.H, ctx.KV = H, KV
        return out[:H], out[H : H + KV], out[H + KV :]

    @staticmethod
    def backward(ctx, dq, dk, dv):
        (rot,) = ctx.saved_tensors
        H, KV, (_, B, T, D) = ctx.H, ctx.KV, dq.shape
        # (a gradient through a batched matmul's transposed operand may come column-major)
        dq, dk, dv = (t if t.stride(-1) == 1 else t.contiguous() for t in (dq, dk, dv))
        d = dq.new_empty(B, T, H + 2 * KV, D)
        # rotate back (times conj(rot)), straight into the q and k heads of d
        torch.mul(pairs(dq).permute(1, 2, 0, 3), rot.conj(), out=pairs(d[:, :, :H]))
        torch.mul(pairs(dk).permute(1, 2, 0, 3), rot.conj(), out=pairs(d[:, :, H : H + KV]))
        d[:, :, H + KV :].copy_(dv.permute(1, 2, 0, 3))
        return d.flatten(-2), None, None, None


class RoPEKernel(torch.autograd.Function):
    """RoPE in one pass each way (smolforge/core/cpu_kernels.cpp): the same map."""

    @staticmethod
    def forward(ctx, qkv, cosx, sinx, H: int, KV: int):
        out = torch.ops.smolforge.rope(qkv.contiguous(), cosx, sinx, H, KV)  # (H + 2 KV, B, T, D)
        ctx.save_for_backward(cosx, sinx)
        return out[:H], out[H : H + KV], out[H + KV :]

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cosx, sinx = ctx.saved_tensors
        d = torch.ops.smolforge.rope_backward(dq.contiguous(), dk.contiguous(), dv.contiguous(), cosx, sinx)
        return d, None, None, None, None


def kernel_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B or 1, T, 1, D/2) -> the kernel's (B or 1, T, D) tables: each cos twice,
    each sin as (-sin, +sin), so that a pair (a, b) becomes (a cos - b sin, b cos + a sin)."""
    cosx = cos.squeeze(2).repeat_interleave(2, -1)
    sinx = torch.stack([-sin.squeeze(2), sin.squeeze(2)], -1).flatten(-2)
    return cosx.contiguous(), sinx.contiguous()


def pairs(t: torch.Tensor) -> torch.Tensor:
    """(..., D) real -> (..., D/2) complex view of its (2i, 2i + 1) pairs."""
    return torch.view_as_complex(t.unflatten(-1, (t.shape[-1] // 2, 2)))


def plain(x: torch.Tensor) -> bool:
    """Whether to compute in plain ops: under torch.compile (inductor fuses them itself and
    makes no code for complex numbers) and under autocast (bfloat16 has no complex type,
    and the residual stream stays float32 as in HF, so no addmm into it)."""
    return torch.compiler.is_compiling() or torch.is_autocast_enabled(x.device.type)


def rms_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    if plain(x):
        return F.rms_norm(x, x.shape[-1:], None, eps)
    return RMSScale.apply(x, eps)


def rope_split(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, H: int, KV: int):
    """q (H, B, T, D), k and v (KV, B, T, D) heads of qkv, q and k rotated (see RoPE); cos
    and sin (B or 1, T, 1, D/2)."""
    if not plain(qkv) and cpu_kernels.usable(qkv, cos):
        return RoPEKernel.apply(qkv, *kernel_tables(cos, sin), H, KV)
    if not plain(qkv):
        return RoPE.apply(qkv, torch.complex(cos, sin), H, KV)
    D = qkv.shape[-1] // (H + 2 * KV)
    cos, sin = cos.to(qkv.dtype), sin.to(qkv.dtype)  # as HF casts them
    qk = qkv[..., : (H + KV) * D].unflatten(-1, (H + KV, D // 2, 2))  # (B, T, H + KV, D/2, 2)
    a, b = qk[..., 0], qk[..., 1]
    qk = torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)  # (B, T, H + KV, D)
    qk, v = qk.permute(2, 0, 1, 3), qkv[..., (H + KV) * D :].unflatten(-1, (KV, D)).permute(2, 0, 1, 3)
    return qk[:H], qk[H:], v  # head-major views, as RoPE returns


class SwiGLU(torch.autograd.Function):
    """silu(gate) * up of h = [gate | up] (B, T, 2F) -> (B, T, F). The backward returns
    one (B, T, 2F) gradient, for the fused gate/up matmul, written over h itself: h is
    the matmul's fresh output, saved here alone, so nothing else reads it (a second
    backward through the same graph fails on h's version counter; none is asked for)."""

    @staticmethod
    def forward(ctx, h):
        if cpu_kernels.usable(h):  # one pass; the backward recomputes silu from h
            ctx.save_for_backward(h)
            return torch.ops.smolforge.swiglu(h.contiguous())
        gate, up = h.chunk(2, -1)
        s = F.silu(gate)
        ctx.save_for_backward(h, s)
        return s * up

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        if len(ctx.saved_tensors) == 1:
            (h,) = ctx.saved_tensors
            torch.ops.smolforge.swiglu_backward_(h, g.contiguous())
            torch.autograd.graph.increment_version(h)  # (a custom op does not count its writes)
            return h
        h, s = ctx.saved_tensors
        gate, up = h.chunk(2, -1)
        # h becomes its own gradient, each half read for the last time as it is overwritten
        torch.ops.aten.silu_backward.grad_input(g, gate, grad_input=gate)  # g * silu'(gate)
        gate.mul_(up)  # d gate = g * up * silu'(gate)
        torch.mul(g, s, out=up)  # d up = g * silu(gate)
        return h


def swiglu(h: torch.Tensor) -> torch.Tensor:
    if plain(h):
        gate, up = h.chunk(2, -1)
        return F.silu(gate) * up
    return SwiGLU.apply(h)


SHORT = 128  # causal attention over at most this many positions: ShortAttention (measured crossover ~150)
KERNEL_T = 512  # causal rows up to this length: KernelAttention where the CPU kernels run (2x SDPA at 512, even at 1024)


def attend(q, k, v, mask) -> torch.Tensor:
    """Attention of q (H, B, T, D) over k, v (H, B, T, D), causal or under `mask` ->
    (B, T, H D). Short causal rows (T <= SHORT): the (H B, T, T) scores fit in cache, and
    two batched matmuls around a softmax beat the flash kernel's tiling
    (bench/scratch.py); longer ones and masks go to SDPA."""
    H, B, T, D = q.shape
    if mask is not None or T > SHORT or plain(q):
        y = F.scaled_dot_product_attention(
            *(t.transpose(0, 1) for t in (q, k, v)), attn_mask=mask, is_causal=mask is None, scale=D**-0.5
        )  # (B, H, T, D)
        return y.transpose(1, 2).reshape(B, T, H * D)
    y = ShortAttention.apply(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1))  # (H B, T, D)
    return y.view(H, B, T, D).permute(1, 2, 0, 3).reshape(B, T, H * D)


class KernelAttention(torch.autograd.Function):
    """RoPE and causal attention in one fused CPU kernel each way
    (smolforge/core/cpu_kernels.cpp): qkv (B, T, (H + 2 KV) D), its q and k heads
    pair-interleaved as for RoPE, and the kernel's cos/sin tables (`kernel_tables`) ->
    (B, T, H D). Head by head in cache, the causal half only, q and k rotated on the way
    in; saves the (B H, T, T) probabilities for the backward."""

    @staticmethod
    def forward(ctx, qkv, cosx, sinx, H: int, KV: int):
        qkv = qkv.contiguous()
        scale = (qkv.shape[-1] // (H + 2 * KV)) ** -0.5
        y, p = torch.ops.smolforge.attention(qkv, cosx, sinx, H, KV, scale)
        ctx.save_for_backward(qkv, cosx, sinx, p)
        ctx.H, ctx.KV, ctx.scale = H, KV, scale
        return y

    @staticmethod
    def backward(ctx, dy):
        qkv, cosx, sinx, p = ctx.saved_tensors
        d = torch.ops.smolforge.attention_backward(
            dy.contiguous(), qkv, cosx, sinx, p, ctx.H, ctx.KV, ctx.scale
        )
        return d, None, None, None, None


class ShortAttention(torch.autograd.Function):
    """Causal softmax(q k^T / sqrt(D)) v over q, k, v (N, T, D), the (N, T, T) scores
    made in place: one buffer holds scores, then probabilities, then (backward) their
    gradient."""

    @staticmethod
    def forward(ctx, q, k, v):
        N, T, D = q.shape
        causal = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
        p = torch.baddbmm(causal, q, k.transpose(1, 2), alpha=D**-0.5)  # (N, T, T) scores
        torch.softmax(p, -1, out=p)
        ctx.save_for_backward(q, k, v, p)
        return torch.bmm(p, v)

    @staticmethod
    def backward(ctx, dy):
        q, k, v, p = ctx.saved_tensors
        scale = q.shape[-1] ** -0.5
        dv = torch.bmm(p.transpose(1, 2), dy)
        dp = torch.bmm(dy, v.transpose(1, 2))  # (N, T, T)
        ds = torch.ops.aten._softmax_backward_data(dp, p, -1, p.dtype)  # p * (dp - sum(dp * p))
        dq = torch.baddbmm(q, ds, k, beta=0, alpha=scale)  # (q only gives the shape: beta 0)
        dk = torch.baddbmm(k, ds.transpose(1, 2), q, beta=0, alpha=scale)
        return dq, dk, dv


def residual_linear(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x + h @ weight.T, (B, T, C): one addmm (BLAS adds into x's copy)."""
    if plain(x):
        return x + F.linear(h, weight)
    B, T, C = x.shape
    return torch.addmm(x.reshape(B * T, C), h.reshape(B * T, -1), weight.t()).view(B, T, C)


# ---- the model, module for module HF's


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_scale(x, self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        C, H, KV = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.n_heads, self.n_kv_heads, self.head_dim = H, KV, C // H
        D = self.head_dim
        self.q_proj = nn.Linear(C, H * D, bias=False)
        self.k_proj = nn.Linear(C, KV * D, bias=False)
        self.v_proj = nn.Linear(C, KV * D, bias=False)
        self.o_proj = nn.Linear(H * D, C, bias=False)
        # rows of a q or k weight in RoPE's pair order: 0, D/2, 1, D/2 + 1, ... in each head
        pairs = torch.stack([torch.arange(D // 2), torch.arange(D // 2) + D // 2], 1).flatten()
        self.register_buffer("pairs", (torch.arange(H)[:, None] * D + pairs).flatten(), persistent=False)

    def forward(self, x, xhat, norm_w, cos, sin, mask):
        """x + attention(xhat * norm_w); x (B, T, C) the residual, xhat = x / rms(x)."""
        B, T, C = x.shape
        H, KV, D = self.n_heads, self.n_kv_heads, self.head_dim
        wq = self.q_proj.weight[self.pairs] * norm_w
        wk = self.k_proj.weight[self.pairs[: KV * D]] * norm_w  # the same order for the KV key heads
        w = torch.cat([wq, wk, self.v_proj.weight * norm_w])  # ((H + 2 KV) D, C)
        qkv = F.linear(xhat, w)  # (B, T, (H + 2 KV) D)
        if mask is None and T <= KERNEL_T and not plain(qkv) and cpu_kernels.usable(qkv, cos):
            y = KernelAttention.apply(qkv, *kernel_tables(cos, sin), H, KV)  # (B, T, H D)
            return residual_linear(x, y, self.o_proj.weight)
        q, k, v = rope_split(qkv, cos, sin, H, KV)  # (H or KV, B, T, D)
        if KV < H:  # grouped-query attention: each k/v head serves H / KV query heads
            k = k.repeat_interleave(H // KV, dim=0)
            v = v.repeat_interleave(H // KV, dim=0)
        y = attend(q, k, v, mask)  # (B, T, H D)
        return residual_linear(x, y, self.o_proj.weight)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        C, F_ = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, F_, bias=False)
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.down_proj = nn.Linear(F_, C, bias=False)

    def forward(self, x, xhat, norm_w):
        """x + mlp(xhat * norm_w)."""
        w = torch.cat([self.gate_proj.weight, self.up_proj.weight]) * norm_w  # (2F, C)
        return residual_linear(x, swiglu(F.linear(xhat, w)), self.down_proj.weight)  # gate, up: one matmul


class DecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask):
        norm = self.input_layernorm
        x = self.self_attn(x, rms_scale(x, norm.eps), norm.weight, cos, sin, mask)
        norm = self.post_attention_layernorm
        return self.mlp(x, rms_scale(x, norm.eps), norm.weight)


class LlamaModel(nn.Module):
    """HF's `LlamaModel`: embeddings, decoder layers, final norm."""

    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        D = config.hidden_size // config.num_attention_heads
        # HF's inverse frequencies, the same float32 values
        inv_freq = 1.0 / (rope_parameters(config)["rope_theta"] ** (torch.arange(0, D, 2).float() / D))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, input_ids, position_ids=None, attention_mask=None) -> BaseModelOutput:
        """input_ids (B, T); position_ids (B, T), any ids (RoPE rotates by each), or None
        for 0 .. T-1; attention_mask None (causal) or 4D (B or 1, 1, T, T), bool True where
        a query may attend (or float, added to the scores)."""
        return BaseModelOutput(self.norm(self.hidden(input_ids, position_ids, attention_mask)))

    def hidden(self, input_ids, position_ids=None, attention_mask=None) -> torch.Tensor:
        """The last layer's output (B, T, C), before the final norm."""
        if attention_mask is not None and attention_mask.dim() != 4:
            raise ValueError(
                f"attention_mask: expected None or a 4D (B, 1, T, T) mask, got shape {tuple(attention_mask.shape)}"
            )
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        # one rotation per position, shared by every layer and head
        angles = position_ids[..., None, None].float() * self.inv_freq  # (B, T, 1, D/2)
        cos, sin = angles.cos(), angles.sin()
        x = self.embed_tokens(input_ids)  # (B, T, C)
        for layer in self.layers:
            x = layer(x, cos, sin, attention_mask)
        return x


class Llama(nn.Module):
    """HF's `LlamaForCausalLM` for training: `model(input_ids=..., position_ids=...,
    attention_mask=..., logits_to_keep=...).logits`, `model.model(...).last_hidden_state`,
    `model.lm_head`, `model.config`, `model.generation_config`, and HF's state-dict names.
    Another class name, so that nothing takes it for transformers' own (smolforge.core.decode
    picks its KV-cache stepper by that name)."""

    def __init__(self, config):
        super().__init__()
        from transformers import GenerationConfig

        check_config(config)
        self.config = config
        self.generation_config = GenerationConfig.from_model_config(config)  # saved with the model
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, position_ids=None, attention_mask=None, logits_to_keep=0) -> CausalLMOutput:
        """logits_to_keep: 0 for every position, k > 0 for the last k, or a 1D long tensor
        of positions along T."""
        h = self.model.hidden(input_ids, position_ids, attention_mask)  # (B, T, C)
        if isinstance(logits_to_keep, int):
            h = h[:, -logits_to_keep:] if logits_to_keep else h
        else:
            h = h[:, logits_to_keep]
        norm = self.model.norm
        return CausalLMOutput(F.linear(rms_scale(h, norm.eps), self.lm_head.weight * norm.weight))
