"""Stage convert: turn train's HF model directory into GGUF files for llama.cpp and an
Ollama Modelfile, and prove that llama.cpp reproduces the HF model on validation examples.

Reads HF (config.json, model.safetensors, tokenizer files with the chat template,
smolforge.json; written by stage train) and TOKENS/{meta.json,val.*} (written by stage
pretokenize). Writes OUT/:

    model-<type>.gguf     one per convert.<model>.file_types (f32, f16, q8_0), with the
                          tokenizer and chat template inside
    Modelfile             Ollama: FROM ./model-<modelfile.file_type>.gguf, the chat
                          template as a Go template, stop words, persona, sampling

and METRICS, per file type: max_abs_logit_diff and top1_agreement (llama.cpp vs HF on
the first parity_examples validation examples), perplexity and hf_perplexity (llama.cpp's
and HF's on those examples' trained tokens), tokenizer_match (share of those examples'
texts tokenized identically), bytes, quantized_tensors, kept_tensors; and
q8_0_vs_f16_ppl_ratio when both are exported. When a figure misses its convert.<model>.gate
threshold the stage fails (exit 2) and writes nothing.

Run by hand:
    python -m stages.convert --model nets --hf models/nets/hf \
        --tokens data/pretokenize/nets --out models/nets/gguf \
        --metrics metrics/convert/nets.json
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smolforge import gguf_export, modelfile, tokens
from smolforge.cli import StageError, produced_by, run
from smolforge.io import atomic_dir, read_meta, write_json
from smolforge.log import setup
from smolforge.params import load_params

FileType = Literal["f32", "f16", "q8_0"]


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
                if ft not in gguf_export.FILE_TYPES:
                    errors.append(
                        f"{name}.{ft}: unknown file type (expected {', '.join(gguf_export.FILE_TYPES)})"
                    )
                elif value < 0 or (name == "min_top1" and value > 1):
                    errors.append(
                        f"{name}.{ft}: expected {'0..1' if name == 'min_top1' else '>= 0'}, got {value}"
                    )
        if not 0 <= self.min_tokenizer_match <= 1:
            errors.append(f"min_tokenizer_match: expected 0..1, got {self.min_tokenizer_match}")
        if self.max_ppl_ratio < 1:
            errors.append(f"max_ppl_ratio: expected >= 1, got {self.max_ppl_ratio}")
        return errors


@dataclass(frozen=True)
class ModelfileParams:
    file_type: FileType  # the GGUF file the Modelfile's FROM names
    temperature: float
    num_ctx: int  # Ollama's context window, at most the model's context length

    def check(self) -> list[str]:
        errors = [] if self.temperature >= 0 else [f"temperature: expected >= 0, got {self.temperature}"]
        return errors + ([] if self.num_ctx >= 1 else [f"num_ctx: expected >= 1, got {self.num_ctx}"])


@dataclass(frozen=True)
class ConvertParams:
    file_types: list[FileType]
    parity_examples: int  # validation examples compared between llama.cpp and HF
    threads: int  # llama.cpp CPU threads
    gate: GateParams
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


def read_task(hf: Path) -> dict:
    """The task fields train recorded in smolforge.json (chat style, stop words, persona)."""
    where, path = produced_by("train"), hf / "smolforge.json"
    if not path.is_file():
        raise StageError(f"{path}: file not found {where}")
    try:
        task = json.loads(path.read_bytes()).get("task")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise StageError(f"{path}: not a JSON object {where}") from None
    if not isinstance(task, dict):
        raise StageError(f'{path}: field "task": expected an object, got {task!r} {where}')
    stop = task.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise StageError(f'{path}: field "task.stop": expected a list of strings, got {stop!r} {where}')
    if not isinstance(task.get("system", ""), str):
        raise StageError(f'{path}: field "task.system": expected a string {where}')
    return task


def parity_examples(folder: Path, vocab_size: int, n: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and loss masks of the first `n` non-empty validation examples."""
    meta = read_meta(folder, "pretokenize", (1,))
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


def file_metrics(report: gguf_export.ExportReport, par: gguf_export.Parity) -> dict:
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


def gate_failures(metrics: dict, gate: GateParams, file_types: list[str]) -> list[str]:
    """Every threshold of `gate` that `metrics` misses, as readable lines."""
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="which params subsection: convert.<model>")
    ap.add_argument("--hf", type=Path, required=True, help="HF model directory")
    ap.add_argument("--tokens", type=Path, required=True, help="pretokenize output folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("convert")
    logging.getLogger("gguf").setLevel(logging.WARNING)  # GGUFWriter logs its write plan at INFO
    section = f"convert.{args.model}"
    p = load_params(section, ConvertParams, args.params)

    # ---- load and check
    config = check_hf_dir(args.hf)
    n_ctx = config.get("max_position_embeddings", 0)
    if p.modelfile.num_ctx > n_ctx:
        raise StageError(
            f"{args.params}: {section}.modelfile.num_ctx: {p.modelfile.num_ctx} exceeds the model's "
            f"context length {n_ctx} ({args.hf}/config.json max_position_embeddings)"
        )
    task = read_task(args.hf)
    examples = parity_examples(args.tokens, config.get("vocab_size", 0), p.parity_examples)
    seqs, masks = [ids for ids, _ in examples], [mask for _, mask in examples]
    try:
        src = gguf_export.load_source(args.hf, name=args.model)
    except gguf_export.ExportError as e:
        raise StageError(f"{args.hf}: {e} {produced_by('train')}") from None
    # decoded with specials kept, so llama.cpp must also map "<s>" etc. to their ids
    texts = [src.tokenizer.decode(s, skip_special_tokens=False) for s in seqs]

    # ---- export each file type, compare all with HF, gate
    with atomic_dir(args.out) as tmp:
        reports = {ft: gguf_export.write_gguf(src, tmp / f"model-{ft}.gguf", ft) for ft in p.file_types}
        paths = {ft: r.path for ft, r in reports.items()}
        parities = gguf_export.check_parities(paths, src, seqs, texts, p.threads, masks=masks)
        metrics = {ft: file_metrics(reports[ft], parities[ft]) for ft in p.file_types}
        for ft in p.file_types:
            log_file(log, ft, reports[ft], parities[ft], len(texts))
        if "q8_0" in metrics and "f16" in metrics and metrics["f16"]["perplexity"]:
            ratio = metrics["q8_0"]["perplexity"] / metrics["f16"]["perplexity"]
            metrics["q8_0_vs_f16_ppl_ratio"] = ratio
            log.info("q8_0 perplexity / f16 perplexity: %.6g", ratio)
        failures = gate_failures(metrics, p.gate, p.file_types)
        if failures:
            raise StageError(
                f"parity gate ({args.params}: {section}.gate) failed for {args.hf}; nothing written:\n  "
                + "\n  ".join(failures)
            )
        (tmp / "Modelfile").write_text(
            modelfile.build(
                f"model-{p.modelfile.file_type}.gguf",
                src.tokenizer.chat_template,
                task,
                src.tokenizer.bos_token,
                src.tokenizer.eos_token,
                p.modelfile.temperature,
                p.modelfile.num_ctx,
                name=args.model,
            ),
            encoding="utf-8",
        )
    write_json(args.metrics, metrics)


def log_file(log, ft: str, report: gguf_export.ExportReport, par: gguf_export.Parity, n_texts: int) -> None:
    kept = f" ({', '.join(report.kept)})" if report.kept else ""
    ppl = "n/a" if par.perplexity is None else f"{par.perplexity:.6g} (HF {par.hf_perplexity:.6g})"
    log.info(
        "%s: %s bytes | %d quantized, %d kept%s | max |dlogit| %.2e | top-1 %.1f%% over %s positions "
        "| perplexity %s over %s tokens | tokenizer %.0f%% of %d texts",
        ft,
        f"{report.n_bytes:,}",
        len(report.quantized),
        len(report.kept),
        kept,
        par.max_abs_logit_diff,
        100 * par.top1_agreement,
        f"{par.n_positions:,}",
        ppl,
        f"{par.n_loss_tokens:,}",
        100 * par.tokenizer_match,
        n_texts,
    )


if __name__ == "__main__":
    raise SystemExit(run(main))
