"""init: scratch — a fresh Llama of shape `train.<model>.model` (smolforge.core.model): it
trains as smolforge.core.llama and is saved as transformers' LlamaForCausalLM."""

from __future__ import annotations

from pathlib import Path

from smolforge.core import model as model_lib
from smolforge.core.train import TrainParams


def build(p: TrainParams, meta: dict, tokens_dir: Path, longest: int, rank: int):
    """A Llama with the token files' vocabulary and special ids and a context of at least
    `longest` tokens (`max_seq_len: auto` takes exactly that), its weights drawn from
    `p.seed` (the same on every rank: DDP starts from one model)."""
    ids = meta["vocab_size"], meta["bos_id"], meta["eos_id"], meta["pad_id"]
    return model_lib.build(model_lib.llama_config(model_lib.fit(p.model, longest), *ids), p.seed)


def save(model, folder: Path) -> None:
    """An ordinary HF folder: transformers' LlamaForCausalLM with the trained weights (and
    the generation config train set on the training model)."""
    model_lib.to_hf(model).save_pretrained(folder)
