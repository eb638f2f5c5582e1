"""The convert step: its params, its checks of train's and pretokenize's outputs, and the
export of every file type with its parity figures (stage convert writes what this returns).

Per file type the metrics are max_abs_logit_diff and top1_agreement (llama.cpp vs HF on
the validation examples), perplexity and hf_perplexity (on their trained tokens),
tokenizer_match (share of their texts tokenized identically), bytes, quantized_tensors
and kept_tensors; q8_0_vs_f16_ppl_ratio is added when both of those are exported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from smolforge.core import tokens
from smolforge.core.cli import StageError, produced_by
from smolforge.core.io import read_meta
from smolforge.gguf import export, parity
from smolforge.gguf.export import FileType
from smolforge.gguf.modelfile import ModelfileParams

log = logging.getLogger(__name__)

Example = tuple[list[int], list[int]]  # token ids and loss mask (1 = trained target) of one example


@dataclass(frozen=True)
class ConvertParams:
    """params.yaml convert.<model>."""

    file_types: list[FileType]
    parity_examples: int  # validation examples compared between llama.cpp and HF
    threads: int  # llama.cpp CPU threads
    gate: parity.GateParams
    modelfile: ModelfileParams

    def check(self) -> list[str]:
        errors = []
        if not self.file_types or len(set(self.file_types)) != len(self.file_types):
            errors.append(f"file_types: expected a non-empty list without repeats, got {self.file_types}")
        if self.parity_examples < 1:
            errors.append(f"parity_examples: expected >= 1, got {self.parity_examples}")
        if self.threads < 1:
            errors.append(f"threads: expected >= 1, got {self.threads}")
        for name in ("min_top1", "max_logit_diff"):
            missing = [ft for ft in self.file_types if ft not in getattr(self.gate, name)]
            if missing:
                errors.append(f"gate.{name}: no threshold for {', '.join(missing)} (in file_types)")
        if self.modelfile.file_type not in self.file_types:
            errors.append(
                f"modelfile.file_type: {self.modelfile.file_type} is not in file_types {self.file_types}"
            )
        return errors


# ---------------------------------------------------------------- inputs


def check_hf_dir(hf: Path) -> dict:
    """train's output must be a loadable HF Llama; returns its config.json."""
    where = produced_by("train")
    path = hf / "config.json"
    if not path.is_file():
        raise StageError(f"{path}: file not found {where}")
    try:
        config = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise StageError(f"{path}: not valid JSON ({e.msg}) {where}") from None
    except UnicodeDecodeError as e:
        raise StageError(f"{path}: not valid JSON (not UTF-8: {e.reason}) {where}") from None
    if not isinstance(config, dict) or config.get("model_type") != "llama":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise StageError(f'{path}: model_type {found!r} is not a Llama (expected "llama") {where}')
    if not any((hf / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        raise StageError(f"{hf}/model.safetensors: file not found {where}")
    if not (hf / "tokenizer.json").is_file():
        raise StageError(f"{hf}/tokenizer.json: file not found {where}")
    return config


def parity_examples(folder: Path, vocab_size: int, n: int) -> list[Example]:
    """Token ids and loss masks of the first `n` non-empty validation examples of
    pretokenize's `folder`, whose vocabulary must fit the model's `vocab_size` rows."""
    meta = read_meta(folder, "pretokenize", (tokens.FORMAT_VERSION,))
    if meta["vocab_size"] > vocab_size:
        raise StageError(
            f"{folder}/meta.json: vocab_size {meta['vocab_size']} exceeds the model's "
            f"{vocab_size} (tokens and model come from different runs?) {produced_by('pretokenize')}"
        )
    val = tokens.read_split(folder, "val", meta)
    pairs = [val.example(i) for i in range(min(n, len(val)))]
    out = [(ids.tolist(), mask.tolist()) for ids, mask in pairs if len(ids)]
    if not out:
        raise StageError(f"{folder}/val.idx: no non-empty validation examples {produced_by('pretokenize')}")
    return out


# ---------------------------------------------------------------- export and compare


def export_and_compare(
    src: export.Source, folder: Path, file_types: list[str], examples: list[Example], threads: int
) -> dict:
    """Write `folder`/model-<type>.gguf for each file type, compare every file with HF on
    `examples`, log one line per file; returns the metrics (see the module docstring)."""
    seqs, masks = [ids for ids, _ in examples], [mask for _, mask in examples]
    # decoded with specials kept, so llama.cpp must also map "<s>" etc. to their ids
    texts = [src.tokenizer.decode(s, skip_special_tokens=False) for s in seqs]
    reports = {ft: export.write_gguf(src, folder / f"model-{ft}.gguf", ft) for ft in file_types}
    paths = {ft: r.path for ft, r in reports.items()}
    parities = parity.check_parities(paths, src, seqs, texts, threads, masks=masks)
    metrics = {ft: file_metrics(reports[ft], parities[ft]) for ft in file_types}
    for ft in file_types:
        log_file(ft, reports[ft], parities[ft], len(texts))
    if "q8_0" in metrics and "f16" in metrics and metrics["f16"]["perplexity"]:
        ratio = metrics["q8_0"]["perplexity"] / metrics["f16"]["perplexity"]
        metrics["q8_0_vs_f16_ppl_ratio"] = ratio
        log.info("q8_0 perplexity / f16 perplexity: %.6g", ratio)
    return metrics


def file_metrics(report: export.ExportReport, par: parity.Parity) -> dict:
    """One file type's figures, as convert's metrics file holds them."""
    return {
        "max_abs_logit_diff": par.max_abs_logit_diff,
        "top1_agreement": par.top1_agreement,
        "tokenizer_match": par.tokenizer_match,
        "perplexity": par.perplexity,
        "hf_perplexity": par.hf_perplexity,
        "bytes": report.n_bytes,
        "quantized_tensors": len(report.quantized),
        "kept_tensors": len(report.kept),
    }


def headline(metrics: dict) -> dict:
    """The figures convert's metrics file holds: per file type the share of positions whose
    top token agrees with HF, and the q8_0/f16 perplexity ratio, rounded to what survives a
    rerun on another CPU. Every figure, unrounded, goes to OUT/parity.json."""
    out = {
        ft: {"top1_agreement": round(m["top1_agreement"], 4)}
        for ft, m in metrics.items()
        if isinstance(m, dict)
    }
    if "q8_0_vs_f16_ppl_ratio" in metrics:
        out["q8_0_vs_f16_ppl_ratio"] = round(metrics["q8_0_vs_f16_ppl_ratio"], 4)
    return out


def log_file(ft: str, report: export.ExportReport, par: parity.Parity, n_texts: int) -> None:
    kept = f" ({', '.join(report.kept)})" if report.kept else ""
    ppl = "n/a" if par.perplexity is None else f"{par.perplexity:.6g} (HF {par.hf_perplexity:.6g})"
    log.info(
        "%s: %s bytes | %d quantized, %d kept%s | max |dlogit| %.2e | top-1 %.1f%% over %s positions "
        "| perplexity %s over %s tokens | tokenizer %.0f%% of %d texts",
        ft, f"{report.n_bytes:,}", len(report.quantized), len(report.kept), kept,
        par.max_abs_logit_diff, 100 * par.top1_agreement, f"{par.n_positions:,}", ppl,
        f"{par.n_loss_tokens:,}", 100 * par.tokenizer_match, n_texts,
    )  # fmt: skip
