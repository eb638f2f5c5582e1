"""llama.cpp parity: does a GGUF file compute what the HF model computes, and is that
close enough?

`check_parities` feeds the same token ids to llama.cpp (each GGUF file) and to HF (once)
and compares logits, argmax tokens and perplexity on the trained positions; it also
tokenizes the same texts with both. `GateParams` are the thresholds convert holds every
file to, and `gate_failures` lists the ones a file misses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smolforge.gguf.export import FILE_TYPES, Source


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


# ---------------------------------------------------------------- measuring


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


# ---------------------------------------------------------------- the gate


@dataclass(frozen=True)
class GateParams:
    """Thresholds every export must meet; per-file-type ones are keyed by file type."""

    min_top1: dict[str, float]  # least share of positions whose argmax agrees with HF
    max_logit_diff: dict[str, float]  # largest |llama.cpp - HF| logit over those positions
    min_tokenizer_match: float  # least share of texts llama.cpp tokenizes as HF does
    max_ppl_ratio: float  # q8_0 perplexity / f16 perplexity, when both are exported

    def check(self) -> list[str]:
        errors = []
        for name in ("min_top1", "max_logit_diff"):
            for ft, value in getattr(self, name).items():
                if ft not in FILE_TYPES:
                    errors.append(f"{name}.{ft}: unknown file type (expected {', '.join(FILE_TYPES)})")
                elif value < 0 or (name == "min_top1" and value > 1):
                    errors.append(
                        f"{name}.{ft}: expected {'0..1' if name == 'min_top1' else '>= 0'}, got {value}"
                    )
        if not 0 <= self.min_tokenizer_match <= 1:
            errors.append(f"min_tokenizer_match: expected 0..1, got {self.min_tokenizer_match}")
        if self.max_ppl_ratio < 1:
            errors.append(f"max_ppl_ratio: expected >= 1, got {self.max_ppl_ratio}")
        return errors


def gate_failures(metrics: dict, gate: GateParams, file_types: list[str]) -> list[str]:
    """Every threshold of `gate` that `metrics` (convert's, per file type) misses, as readable lines."""
    out = []
    for ft in file_types:
        m = metrics[ft]
        if m["top1_agreement"] < gate.min_top1[ft]:
            out.append(f"{ft}: top-1 agreement {m['top1_agreement']:.4f} < min_top1 {gate.min_top1[ft]}")
        if m["max_abs_logit_diff"] > gate.max_logit_diff[ft]:
            diff, limit = m["max_abs_logit_diff"], gate.max_logit_diff[ft]
            out.append(f"{ft}: max |logit diff| {diff:.4g} > max_logit_diff {limit}")
        if m["tokenizer_match"] < gate.min_tokenizer_match:
            match, limit = m["tokenizer_match"], gate.min_tokenizer_match
            out.append(f"{ft}: tokenizer match {match:.4f} < min_tokenizer_match {limit}")
    ratio = metrics.get("q8_0_vs_f16_ppl_ratio")
    if ratio is not None and ratio > gate.max_ppl_ratio:
        q8, f16 = metrics["q8_0"]["perplexity"], metrics["f16"]["perplexity"]
        out.append(
            f"q8_0: perplexity {q8:.4f} is {ratio:.4f}x f16's {f16:.4f} > max_ppl_ratio {gate.max_ppl_ratio}"
        )
    return out
