"""init: full — every weight of a pretrained base trains; the result is saved as it is."""

from __future__ import annotations

from pathlib import Path

import torch

from smolforge.core import pretrained
from smolforge.core.train import TrainParams


def build(p: TrainParams, meta: dict, tokens_dir: Path, longest: int, rank: int):
    """The base in float32, every weight trainable."""
    model = pretrained.load_for_training(p.base, meta, tokens_dir, longest)
    torch.manual_seed(p.seed + rank)  # one random stream per rank (dropout, if the base has any)
    return model


def save(model, folder: Path) -> None:
    model.save_pretrained(folder)
