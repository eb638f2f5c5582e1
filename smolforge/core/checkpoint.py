"""Resumable training state, kept apart from the HF model directory.

`state_dir/ckpt.pt` holds model, optimizer, RNG and data position, plus a fingerprint of
everything the run depends on (params, token files). Of the model it holds the trainable
tensors only: every weight of a model trained from scratch, the adapters alone of a LoRA
finetune (a few MB, not the whole base). A state whose fingerprint differs belongs to
another run and is never resumed. Loaded with `weights_only=True`: a state file can hold
tensors and plain containers only, never pickled code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from smolforge.core.io import atomic_file

log = logging.getLogger(__name__)
CKPT = "ckpt.pt"


def fingerprint(params: Any, files: list[Path]) -> str:
    """sha256 over the params (as JSON) and the bytes of `files`."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for path in files:
        h.update(Path(path).name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def save(state_dir: Path, state: dict) -> None:
    """Write the state atomically: a crash mid-save keeps the previous checkpoint."""
    with atomic_file(Path(state_dir) / CKPT, "wb") as f:
        torch.save(state, f)


def load(state_dir: Path, fingerprint_: str) -> dict | None:
    """The saved state if it belongs to this run, else None (and say why)."""
    path = Path(state_dir) / CKPT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: start over rather than crash
        log.warning("ignoring unreadable checkpoint %s (%s)", path, e)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint_:
        log.info("checkpoint %s is from other params or data; starting fresh", path)
        return None
    return state


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint must hold: the trainable parameters only."""
    keep = {name for name, q in model.named_parameters() if q.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in keep}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Restore `trainable_state`; a missing or foreign tensor is an error, not a silent skip."""
    want = set(trainable_state(model))
    if set(state) != want:
        raise ValueError(
            f"checkpoint holds other tensors than this model trains ({len(state)} vs {len(want)})"
        )
    model.load_state_dict(state, strict=False)
