"""Stage convert: turn train's HF model directory into GGUF files for llama.cpp, and
measure that llama.cpp reproduces the HF model on validation examples.

Reads HF (config.json, model.safetensors, tokenizer files with the chat template; written
by stage train) and TOKENS/{meta.json,val.*} (written by stage pretokenize). Writes OUT/:

    model-<type>.gguf     one per convert.<model>.file_types (f32, f16, q8_0), with the
                          tokenizer and chat template inside

and METRICS, per file type: max_abs_logit_diff and top1_agreement (llama.cpp vs HF on
the first parity_examples validation examples), tokenizer_match (share of those
examples' texts tokenized identically), bytes, quantized_tensors, kept_tensors.

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

from smolforge import gguf_export, tokens
from smolforge.cli import StageError, produced_by, run
from smolforge.io import atomic_dir, read_meta, write_json
from smolforge.log import setup
from smolforge.params import load_params


@dataclass(frozen=True)
class ConvertParams:
    file_types: list[Literal["f32", "f16", "q8_0"]]
    parity_examples: int  # validation examples compared between llama.cpp and HF
    threads: int  # llama.cpp CPU threads

    def check(self) -> list[str]:
        errors = []
        if not self.file_types or len(set(self.file_types)) != len(self.file_types):
            errors.append(f"file_types: expected a non-empty list without repeats, got {self.file_types}")
        if self.parity_examples < 1:
            errors.append(f"parity_examples: expected >= 1, got {self.parity_examples}")
        if self.threads < 1:
            errors.append(f"threads: expected >= 1, got {self.threads}")
        return errors


def check_hf_dir(hf: Path) -> dict:
    """train's output must be a loadable HF Llama; returns its config.json."""
    where = produced_by("train")
    path = hf / "config.json"
    if not path.is_file():
        raise StageError(f"{path}: file not found {where}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise StageError(f"{path}: not valid JSON ({e.msg}) {where}") from None
    if not isinstance(config, dict) or config.get("model_type") != "llama":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise StageError(f'{path}: model_type {found!r} is not a Llama (expected "llama") {where}')
    if not any((hf / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        raise StageError(f"{hf}/model.safetensors: file not found {where}")
    if not (hf / "tokenizer.json").is_file():
        raise StageError(f"{hf}/tokenizer.json: file not found {where}")
    return config


def parity_sequences(folder: Path, vocab_size: int, n: int) -> list[list[int]]:
    """Token ids of the first `n` validation examples."""
    meta = read_meta(folder, "pretokenize", (1,))
    if meta["vocab_size"] > vocab_size:
        raise StageError(
            f"{folder}/meta.json: vocab_size {meta['vocab_size']} exceeds the model's "
            f"{vocab_size} (tokens and model come from different runs?) {produced_by('pretokenize')}"
        )
    val = tokens.read_split(folder, "val", meta)
    seqs = [val.example(i)[0].tolist() for i in range(min(n, len(val)))]
    seqs = [s for s in seqs if s]
    if not seqs:
        raise StageError(f"{folder}/val.idx: no non-empty validation examples {produced_by('pretokenize')}")
    return seqs


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
    p = load_params(f"convert.{args.model}", ConvertParams, args.params)

    # ---- load and check
    config = check_hf_dir(args.hf)
    seqs = parity_sequences(args.tokens, config.get("vocab_size", 0), p.parity_examples)
    try:
        src = gguf_export.load_source(args.hf, name=args.model)
    except gguf_export.ExportError as e:
        raise StageError(f"{args.hf}: {e} {produced_by('train')}") from None
    # decoded with specials kept, so llama.cpp must also map "<s>" etc. to their ids
    texts = [src.tokenizer.decode(s, skip_special_tokens=False) for s in seqs]

    # ---- export each file type and compare it with HF
    metrics = {}
    with atomic_dir(args.out) as tmp:
        for ft in p.file_types:
            report = gguf_export.write_gguf(src, tmp / f"model-{ft}.gguf", ft)
            par = gguf_export.check_parity(report.path, src, seqs, texts, p.threads)
            metrics[ft] = {
                "max_abs_logit_diff": par.max_abs_logit_diff,
                "top1_agreement": par.top1_agreement,
                "tokenizer_match": par.tokenizer_match,
                "bytes": report.n_bytes,
                "quantized_tensors": len(report.quantized),
                "kept_tensors": len(report.kept),
            }
            log.info(
                "%s: %s bytes | %d quantized, %d kept%s | max |dlogit| %.2e | top-1 %.1f%% "
                "over %s positions | tokenizer %.0f%% of %d texts",
                ft,
                f"{report.n_bytes:,}",
                len(report.quantized),
                len(report.kept),
                f" ({', '.join(report.kept)})" if report.kept else "",
                par.max_abs_logit_diff,
                100 * par.top1_agreement,
                f"{par.n_positions:,}",
                100 * par.tokenizer_match,
                len(texts),
            )
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    raise SystemExit(run(main))
