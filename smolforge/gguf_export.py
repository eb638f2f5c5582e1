"""GGUF export: an HF Llama directory becomes a llama.cpp model file, and a parity check
proves llama.cpp computes the same logits and tokens as the HF model.

The converter is a rename table (HF module names -> llama.cpp tensor names) plus one
real transformation: HF stores the q/k projection rows of each head as [first halves |
second halves] for its `rotate_half` RoPE, while llama.cpp's Llama rotates adjacent row
pairs, so those rows are interleaved back (the same permutation as llama.cpp's own
convert_hf_to_gguf.py). The tokenizer (byte-level BPE, llama.cpp model "gpt2") and the
chat template travel inside the file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np

from smolforge.io import sweep_stale

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
    chat: dict = field(default_factory=dict)  # stop words and persona training used (smolforge.json)


@dataclass
class ExportReport:
    """What `write_gguf` wrote: the file and which 2-D tensors got which type."""

    path: Path
    file_type: str
    n_bytes: int
    quantized: list[str] = field(default_factory=list)  # GGUF names stored as Q8_0
    kept: list[str] = field(default_factory=list)  # 2-D names left unquantized in a q8_0 file


@dataclass
class Parity:
    """llama.cpp vs HF on the same token ids and texts."""

    max_abs_logit_diff: float
    top1_agreement: float  # share of positions whose argmax token is the same
    tokenizer_match: float  # share of texts tokenized to the same ids
    n_positions: int
    # exp(mean next-token loss) over the target positions (see target_positions); None
    # when no example has a position to score (every example a single token)
    perplexity: float | None = None
    hf_perplexity: float | None = None
    n_loss_tokens: int = 0


# ---------------------------------------------------------------- loading


def load_source(hf_dir: Path | str, name: str | None = None) -> Source:
    """Load an HF Llama directory (weights in float32) and its tokenizer."""
    from transformers import AutoTokenizer

    from smolforge.basemodel import load_trained

    hf_dir = Path(hf_dir)
    model = load_trained(hf_dir, "float32")
    check_config(model.config)
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    sidecar = hf_dir / "smolforge.json"
    task = json.loads(sidecar.read_text()).get("task", {}) if sidecar.is_file() else {}
    chat = {k: task[k] for k in ("stop", "system") if k in task}
    return Source(model, tok, pre_tokenizer_name(tok), name or hf_dir.name, chat)


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
    """The `tokenizer.ggml.pre` of a byte-level BPE (see smolforge.gguf_vocab); None for a
    sentencepiece-style tokenizer (llama.cpp model "llama"), which has none."""
    import json

    from smolforge import gguf_vocab

    model = json.loads(hf_tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return None
    try:
        return gguf_vocab.pre_tokenizer_name(hf_tokenizer)
    except gguf_vocab.VocabError as e:
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
    # named the way smolforge.io names its temps, so a killed writer's file is swept up later
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
    # what smolforge.talk needs to chat like training did: stop words (JSON) and persona
    if "stop" in src.chat:
        w.add_string("smolforge.stop", json.dumps(src.chat["stop"]))
    if src.chat.get("system"):
        w.add_string("smolforge.system", src.chat["system"])
    if head_dim * cfg.num_attention_heads != cfg.hidden_size:
        # llama.cpp assumes hidden / heads unless told
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)


def _add_tokenizer(w: gguf.GGUFWriter, src: Source) -> None:
    # byte-level BPE, sentencepiece or tiktoken: smolforge.gguf_vocab writes any of them
    from smolforge import gguf_vocab

    try:
        gguf_vocab.add_vocab(w, src.tokenizer, src.model.config.vocab_size, pre=src.pre)
    except gguf_vocab.VocabError as e:
        raise ExportError(str(e)) from None


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


# ---------------------------------------------------------------- parity


def check_parity(
    gguf_path: Path | str,
    src: Source,
    sequences: list[list[int]],
    texts: list[str],
    n_threads: int,
    seed: int = 0,
    masks: list[list[int]] | None = None,
) -> Parity:
    """Run llama.cpp on one GGUF file and HF on `src` with the same ids and texts
    (see `check_parities`)."""
    return check_parities({"": gguf_path}, src, sequences, texts, n_threads, seed, masks)[""]


def check_parities(
    gguf_paths: Mapping[str, Path | str],
    src: Source,
    sequences: list[list[int]],
    texts: list[str],
    n_threads: int,
    seed: int = 0,
    masks: list[list[int]] | None = None,
) -> dict[str, Parity]:
    """Run llama.cpp on each GGUF file and HF on `src` with the same ids and texts.

    Token ids go straight to llama.cpp (`eval`), bypassing its tokenizer, so the logit
    comparison and the tokenizer comparison fail independently. HF's float32 forward is
    the slow half, so it runs once per sequence for all files. `masks` (one 0/1 per
    token as the token files hold them, 1 = trained target) choose the positions whose
    loss makes the perplexities; without them every position after the first counts.
    """
    masks = masks if masks is not None else [[1] * len(s) for s in sequences]
    n_ctx = max([len(s) for s in sequences] + [8])
    llms: dict[str, Any] = {}
    try:
        for key, path in gguf_paths.items():
            llms[key] = _open_llama(path, n_ctx, n_threads, seed)
        tallies = {key: _Tally() for key in llms}
        hf_nll = []
        for ids, mask in zip(sequences, masks, strict=True):
            if not ids:
                continue
            ref = _hf_logits(src.model, ids)
            targets = target_positions(mask)
            hf_nll.append(token_nll(ref, ids, targets))
            for key, llm in llms.items():
                tallies[key].add(_llama_logits(llm, ids), ref, ids, targets)
        hf_ppl, _ = perplexity(hf_nll)
        return {
            key: tallies[key].parity(tokenizer_agreement(llm, src.tokenizer, texts), hf_ppl)
            for key, llm in llms.items()
        }
    finally:
        for llm in llms.values():
            llm.close()


def _open_llama(path: Path | str, n_ctx: int, n_threads: int, seed: int):
    from llama_cpp import Llama

    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        logits_all=True,
        n_threads=n_threads,
        verbose=False,
        seed=seed,
        type_k=0,
        type_v=0,  # GGML_TYPE_F32 KV cache: the default F16 cache alone costs ~1e-2 in logits
    )


def _llama_logits(llm, ids: list[int]) -> np.ndarray:
    """(T, vocab) float32 logits of every position, copied out of llama.cpp's buffer."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.tensor([list(ids)], dtype=torch.long)).logits[0].float().numpy()


@dataclass
class _Tally:
    """One GGUF file's running comparison with HF over the sequences seen so far."""

    max_diff: float = 0.0
    n_same: int = 0
    n_pos: int = 0
    nll: list[np.ndarray] = field(default_factory=list)

    def add(self, ours: np.ndarray, ref: np.ndarray, ids: list[int], targets: np.ndarray) -> None:
        self.max_diff = max(self.max_diff, float(np.abs(ours - ref).max()))
        self.n_same += int((ours.argmax(-1) == ref.argmax(-1)).sum())
        self.n_pos += len(ids)
        self.nll.append(token_nll(ours, ids, targets))

    def parity(self, tokenizer_match: float, hf_perplexity: float | None) -> Parity:
        ppl, n_loss = perplexity(self.nll)
        agree = self.n_same / self.n_pos if self.n_pos else 0.0
        return Parity(self.max_diff, agree, tokenizer_match, self.n_pos, ppl, hf_perplexity, n_loss)


def target_positions(mask: list[int] | np.ndarray) -> np.ndarray:
    """Positions t >= 1 whose token is a trained target (mask 1), each predicted from
    position t - 1; every t >= 1 when the example has none (e.g. an untrained prompt)."""
    t = np.flatnonzero(np.asarray(mask, dtype=bool)[1:]) + 1
    return t if len(t) else np.arange(1, len(mask))


def token_nll(logits: np.ndarray, ids: list[int], targets: np.ndarray) -> np.ndarray:
    """Next-token loss in nats at each target position: logits (T, vocab), ids (T,)."""
    rows = logits[targets - 1].astype(np.float64)  # (n_targets, vocab): position t-1 predicts t
    top = rows.max(axis=-1)
    log_z = top + np.log(np.exp(rows - top[:, None]).sum(axis=-1))
    return log_z - rows[np.arange(len(targets)), np.asarray(ids)[targets]]


def perplexity(nll: list[np.ndarray]) -> tuple[float | None, int]:
    """exp(mean loss) over every scored token of every sequence, and that token count."""
    flat = np.concatenate(nll) if nll else np.zeros(0)
    return (float(np.exp(flat.mean())) if len(flat) else None), len(flat)


def tokenizer_agreement(llm, hf_tokenizer, texts: list[str]) -> float:
    """Share of `texts` that llama.cpp and HF tokenize to the same ids (specials parsed);
    0.0 when there are no texts."""
    if not texts:
        return 0.0
    same = 0
    for text in texts:
        ours = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        ref = hf_tokenizer(text, add_special_tokens=False).input_ids
        same += list(ours) == list(ref)
    return same / len(texts)
