"""GGUF export: an HF Llama directory written by train becomes a llama.cpp model file
(smolforge.gguf.parity proves llama.cpp computes what the HF model computes).

The converter is a rename table (HF module names -> llama.cpp tensor names) plus one
real transformation: HF stores the q/k projection rows of each head as [first halves |
second halves] for its `rotate_half` RoPE, while llama.cpp's Llama rotates adjacent row
pairs, so those rows are interleaved back (the same permutation as llama.cpp's own
convert_hf_to_gguf.py). The tokenizer (byte-level BPE, llama.cpp model "gpt2") and the
chat template travel inside the file, and so do a chat model's stop words and persona
from its model card (smolforge.core.card). The token that ends a turn in the chat
template is end-of-generation for llama.cpp (EOS, or `eot_token_id` where it is another
token), so llama.cpp and Ollama stop where training ended an answer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np

from smolforge.core.card import ModelCard, read_card
from smolforge.core.io import sweep_stale

log = logging.getLogger(__name__)

FileType = Literal["f32", "f16", "q8_0"]
FILE_TYPES: tuple[str, ...] = ("f32", "f16", "q8_0")

Q = gguf.GGMLQuantizationType
_FTYPE = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
_Q8_BLOCK = 32  # Q8_0 packs 32 consecutive values of a row with one f16 scale

# HF name -> GGUF name. Per-layer names apply under model.layers.N. / blk.N.
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")


class ExportError(ValueError):
    """The HF directory holds something this exporter cannot represent faithfully."""


@dataclass
class Source:
    """An HF Llama loaded once and exported to several file types."""

    model: Any  # transformers LlamaForCausalLM, float32, eval mode
    tokenizer: Any  # transformers fast tokenizer
    pre: str | None  # llama.cpp pre-tokenizer name (tokenizer.ggml.pre); None for sentencepiece
    name: str  # general.name
    card: ModelCard  # what train recorded: the task's stop words and persona go into the file


@dataclass
class ExportReport:
    """What `write_gguf` wrote: the file and which 2-D tensors got which type."""

    path: Path
    file_type: str
    n_bytes: int
    quantized: list[str] = field(default_factory=list)  # GGUF names stored as Q8_0
    kept: list[str] = field(default_factory=list)  # 2-D names left unquantized in a q8_0 file


# ---------------------------------------------------------------- loading


def load_source(hf_dir: Path | str, name: str | None = None) -> Source:
    """Load train's HF Llama directory (weights in float32), its tokenizer and model card.

    The card is read first, so a directory without one fails before the weights load.
    """
    from transformers import AutoTokenizer

    from smolforge.core.hf import load_trained

    hf_dir = Path(hf_dir)
    card = read_card(hf_dir)
    model = load_trained(hf_dir, "float32")
    check_config(model.config)
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    return Source(model, tok, pre_tokenizer_name(tok), name or hf_dir.name, card)


def check_config(config) -> None:
    """Refuse Llama variants that llama.cpp's plain `llama` graph would compute differently."""
    problems = []
    if config.model_type != "llama":
        problems.append(f"model_type {config.model_type!r} (expected 'llama')")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config.hidden_act!r} (expected 'silu')")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("attention_bias/mlp_bias set (biases are not exported)")
    # transformers 5 keeps RoPE settings in rope_parameters (rope_scaling is an alias)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        problems.append(f"rope scaling {rope_type!r} (only plain RoPE is exported)")
    if problems:
        raise ExportError("unsupported Llama config: " + "; ".join(problems))


def rope_theta(config) -> float:
    """RoPE base: transformers 5 keeps it in `rope_parameters`, older configs at top level."""
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ExportError("config has no rope_theta")
    return float(theta)


def pre_tokenizer_name(hf_tokenizer) -> str | None:
    """The `tokenizer.ggml.pre` of a byte-level BPE (see smolforge.gguf.vocab); None for a
    sentencepiece-style tokenizer (llama.cpp model "llama"), which has none."""
    from smolforge.gguf import vocab

    model = json.loads(hf_tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return None
    try:
        return vocab.pre_tokenizer_name(hf_tokenizer)
    except vocab.VocabError as e:
        raise ExportError(str(e)) from None


# ---------------------------------------------------------------- tensors


def gguf_name(hf_name: str) -> str:
    """llama.cpp's tensor name for an HF Llama parameter name."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    m = _LAYER_RE.fullmatch(hf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    raise ExportError(f"no GGUF name for HF tensor {hf_name!r}")


def interleave_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder each head's rows from HF's [x_0..x_{d/2-1} | y_0..y_{d/2-1}] to (x_i, y_i) pairs.

    w: (n_heads * head_dim, dim) with n_heads the heads this projection has (n_kv_heads for k).
    """
    head_dim = w.shape[0] // n_heads
    assert head_dim * n_heads == w.shape[0] and head_dim % 2 == 0, f"bad q/k shape {w.shape}"
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_tensors(model) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in HF layout (out, in)) for every exported parameter."""
    cfg = model.config
    out = []
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # llama.cpp falls back to token_embd when `output` is absent
        arr = t.detach().to("cpu").float().numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            arr = interleave_rotary(arr, cfg.num_attention_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            arr = interleave_rotary(arr, cfg.num_key_value_heads)
        out.append((gguf_name(hf_name), np.ascontiguousarray(arr)))
    return out


def tensor_type(arr: np.ndarray, file_type: str) -> gguf.GGMLQuantizationType:
    """Storage type: 1-D always F32; Q8_0 only where rows split into whole 32-blocks."""
    if arr.ndim == 1 or file_type == "f32":
        return Q.F32
    if file_type == "q8_0" and arr.shape[-1] % _Q8_BLOCK == 0:
        return Q.Q8_0
    return Q.F16


# ---------------------------------------------------------------- writing


def write_gguf(src: Source, path: Path | str, file_type: str) -> ExportReport:
    """Write `src` as a GGUF file of `file_type` ("f32", "f16" or "q8_0"), atomically."""
    if file_type not in _FTYPE:
        raise ExportError(f"file type {file_type!r} is not one of {', '.join(FILE_TYPES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # GGUFWriter opens the file by name itself, so it gets a unique temp name beside `path`,
    # named the way smolforge.core.io names its temps, so a killed writer's file is swept up later
    sweep_stale(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    w = gguf.GGUFWriter(tmp, "llama")
    try:
        _add_model_metadata(w, src, file_type)
        _add_tokenizer(w, src)
        report = _add_tensors(w, src.model, file_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    report.path, report.n_bytes = path, path.stat().st_size
    return report


def _add_model_metadata(w: gguf.GGUFWriter, src: Source, file_type: str) -> None:
    cfg = src.model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_name(src.name)
    w.add_file_type(_FTYPE[file_type])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(rope_theta(cfg))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    # what smolforge.chat.talk needs to chat like training did: stop words (JSON) and
    # persona. Only chat models carry them: a nets card's are empty, and talk reads a
    # missing key as empty
    task = src.card.task
    if task.task == "chat":
        w.add_string("smolforge.stop", json.dumps(task.stop))
        if task.system:
            w.add_string("smolforge.system", task.system)
    if head_dim * cfg.num_attention_heads != cfg.hidden_size:
        # llama.cpp assumes hidden / heads unless told
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)


def _add_tokenizer(w: gguf.GGUFWriter, src: Source) -> None:
    # byte-level BPE, sentencepiece or tiktoken: smolforge.gguf.vocab writes any of them
    from smolforge.gguf import vocab

    try:
        vocab.add_vocab(w, src.tokenizer, src.model.config.vocab_size, pre=src.pre)
    except vocab.VocabError as e:
        raise ExportError(str(e)) from None
    eot = end_of_turn_id(src.tokenizer)
    if eot is not None and eot != src.tokenizer.eos_token_id:
        w.add_eot_token_id(eot)


def end_of_turn_id(tok) -> int | None:
    """The token that ends an assistant turn in `tok`'s chat template, which llama.cpp must
    treat as end-of-generation (EOG); None when the template has no single such token.

    llama.cpp ends generation at `tokenizer.ggml.eos_token_id`, `eot_token_id` and
    `eom_token_id` and at control tokens it knows by name (<|im_end|>, <|eot_id|>, ...);
    the build in llama-cpp-python 0.3.36 reads no list of EOG ids. So the turn's end must
    be one token: the first token of the text the template writes after an answer, taken
    when it is a special token (EOS, <|im_end|>, <|eot_id|>) or a lone newline (chat_builder's
    one-line turns). A marker spelled in several ordinary tokens is not taken: its first
    token ("<") would end generation wherever it appears.
    """
    from smolforge.core import styles

    if not tok.chat_template:
        return None
    try:
        after = styles.turn_end(tok.chat_template, tok.bos_token or "", tok.eos_token or "")
    except Exception as e:  # a template that cannot render a plain chat has no turn end to find
        log.warning("GGUF: no end-of-turn token: the chat template fails on a plain chat (%s)", e)
        return None
    ids = tok(after, add_special_tokens=False).input_ids if after else []
    if not ids:
        log.warning("GGUF: no end-of-turn token: the chat template writes nothing after an answer")
        return None
    first = ids[0]
    spec = json.loads(tok.backend_tokenizer.to_str())
    special = {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
    if first in special or tok.decode([first]) == "\n":
        return first
    log.warning(
        "GGUF: the chat template ends a turn with %r, several ordinary tokens: llama.cpp stops at "
        "EOS only (pass the stop words per request; docs/chat.md)",
        after,
    )
    return None


def _add_tensors(w: gguf.GGUFWriter, model, file_type: str) -> ExportReport:
    report = ExportReport(Path(), file_type, 0)
    for name, arr in llama_tensors(model):
        qtype = tensor_type(arr, file_type)
        if qtype == Q.Q8_0:
            report.quantized.append(name)
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
            continue
        if file_type == "q8_0" and arr.ndim > 1:
            report.kept.append(name)
        w.add_tensor(name, arr.astype(np.float16 if qtype == Q.F16 else np.float32))
    return report
