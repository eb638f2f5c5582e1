"""Loading transformers models: quietly, safely, and what stage train wrote.

`load_trained` loads a model directory written by train (safetensors only) for convert,
evaluate and the chat command; `quiet_loading` keeps transformers' progress bars out of
logs. smolforge.core.pretrained loads pretrained bases the same way.
"""

from __future__ import annotations

import struct
from pathlib import Path

from smolforge.core.cli import StageError, produced_by

# what a damaged weights, tokenizer or GGUF file raises while loading (the gguf reader walks
# the file's header with numpy and fails wherever a truncation cuts it); SafetensorError is
# added where safetensors is imported
DAMAGED = (OSError, ValueError, IndexError, KeyError, EOFError, struct.error)


def quiet_loading() -> None:
    """Progress bars only on a terminal: transformers draws its "Loading weights" bar and
    its GGUF dequantizing bar (plain tqdm, which its own switch does not reach) into logs."""
    import sys

    if sys.stderr.isatty():
        return
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = functools.partial(tqdm, disable=True)


def load_trained(hf_dir: Path | str, dtype: str | None = None):
    """A model directory written by stage train, as a causal LM in eval mode; safetensors only.

    train always writes model.safetensors, so nothing here unpickles a file: a
    pytorch_model.bin put in the folder instead is refused, not loaded. A missing or
    damaged weights file is a StageError naming it.
    """
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    hf_dir, where = Path(hf_dir), produced_by("train")
    weights = hf_dir / "model.safetensors"
    if not weights.is_file() and not (hf_dir / "model.safetensors.index.json").is_file():
        raise StageError(f"{weights}: file not found {where}")
    quiet_loading()
    kwargs = {"use_safetensors": True} | ({"dtype": getattr(torch, dtype)} if dtype else {})
    try:
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), **kwargs)
    except (*DAMAGED, SafetensorError) as e:
        raise StageError(f"{weights}: cannot be loaded ({why(e)}) {where}") from None
    model.eval()
    return model


def why(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:300]}"
