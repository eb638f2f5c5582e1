"""The from-scratch model: a Llama, so HF, peft and llama.cpp's tooling all know it.
Training runs `smolforge.core.llama` (HF's LlamaForCausalLM computed in fewer ops, under
HF's parameter names); `to_hf` turns it into transformers' own model, which is what is
saved. Submodule names are HF Llama's (`model.layers.N.self_attn.q_proj`), which
`smolforge.gguf.export` maps to llama.cpp's names with a table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LlamaShape:
    """Architecture params of a scratch Llama (one `train.<model>` subsection part)."""

    dim: int  # hidden size C
    n_layers: int
    n_heads: int
    n_kv_heads: int  # grouped-query attention when < n_heads
    ffn_dim: int  # SwiGLU intermediate size
    # longest sequence the model is configured for (RoPE, no table); auto: the longest
    # example of the token files, training and validation (see `fit`)
    max_seq_len: int | Literal["auto"]
    rope_theta: float

    def check(self) -> list[str]:
        errors = []
        if self.max_seq_len != "auto" and self.max_seq_len < 1:
            errors.append(f"max_seq_len: expected auto or >= 1, got {self.max_seq_len}")
        if self.dim % self.n_heads:
            errors.append(f"dim: {self.dim} is not divisible by n_heads {self.n_heads}")
        elif (self.dim // self.n_heads) % 2:
            errors.append("dim / n_heads must be even (rotary embedding pairs)")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            errors.append(f"n_kv_heads: {self.n_kv_heads} must divide n_heads {self.n_heads}")
        return errors


def fit(shape: LlamaShape, longest: int) -> LlamaShape:
    """`shape` with a context that holds `longest` tokens: `max_seq_len: auto` becomes
    exactly `longest`; a number shorter than that is refused (ValueError, which says what
    to set)."""
    if shape.max_seq_len == "auto":
        return dataclasses.replace(shape, max_seq_len=longest)
    if shape.max_seq_len < longest:
        raise ValueError(
            f"max_seq_len {shape.max_seq_len} is shorter than the longest example ({longest} tokens); "
            f"set it to {longest} or more, or to auto"
        )
    return shape


def llama_config(shape: LlamaShape, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    """A `transformers.LlamaConfig` for `shape` (its context resolved: see `fit`) and a
    tokenizer's vocabulary."""
    from transformers import LlamaConfig

    assert isinstance(shape.max_seq_len, int), "max_seq_len: auto must be resolved with fit() first"

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.dim,
        intermediate_size=shape.ffn_dim,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads,
        max_position_embeddings=shape.max_seq_len,
        rope_theta=shape.rope_theta,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        attention_bias=False,
        mlp_bias=False,
    )


def build(config, seed: int):
    """A freshly initialised scratch Llama for training (`smolforge.core.llama`: HF's
    LlamaForCausalLM in fewer ops, under HF's parameter names); the init depends only on
    `seed`, drawn as HF draws it: every matrix N(0, `config.initializer_range`), norms 1,
    the padding row of the embedding 0. `to_hf` gives the transformers model."""
    import torch

    from smolforge.core.llama import Llama

    torch.manual_seed(seed)
    model = Llama(config)
    with torch.no_grad():
        for p in model.parameters():  # in registration order: embeddings, layers, norm
            if p.dim() == 1:  # the RMSNorm weights
                p.fill_(1.0)
            else:
                p.normal_(0.0, config.initializer_range)
        if config.pad_token_id is not None:
            model.model.embed_tokens.weight[config.pad_token_id].zero_()
    return model


def to_hf(model):
    """transformers' LlamaForCausalLM with `model`'s weights and generation config (a
    transformers model comes back as it is): what `save_pretrained`, `generate` and
    peft need."""
    import copy

    import torch
    from transformers import LlamaForCausalLM

    if isinstance(model, LlamaForCausalLM):
        return model
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # HF's own init (overwritten) leaves the caller's RNG alone
        hf = LlamaForCausalLM(copy.deepcopy(model.config))
    hf.to(device=param.device, dtype=param.dtype)
    hf.load_state_dict(model.state_dict())
    hf.generation_config = copy.deepcopy(model.generation_config)
    hf.train(model.training)
    return hf


def n_params(model) -> int:
    """Parameter count, tied embeddings counted once."""
    return sum(p.numel() for p in model.parameters())
