"""Stage convert: turn train's HF model directory into GGUF files for llama.cpp and an
Ollama Modelfile, and prove that llama.cpp reproduces the HF model on validation examples.

Reads HF (config.json, model.safetensors, tokenizer files with the chat template, and
the model card smolforge.json; written by stage train) and TOKENS/{meta.json,val.*}
(written by stage pretokenize). Writes OUT/:

    model-<type>.gguf     one per convert.<model>.file_types (f32, f16, q8_0), with the
                          tokenizer and chat template inside
    Modelfile             Ollama: FROM ./model-<modelfile.file_type>.gguf, the chat
                          template as a Go template, stop words, persona, sampling,
                          num_ctx (auto: the model's context length)
    parity.json           per file type: max_abs_logit_diff and top1_agreement (llama.cpp
                          vs HF on the first parity_examples validation examples),
                          perplexity and hf_perplexity (on those examples' trained tokens),
                          tokenizer_match (share of their texts tokenized identically),
                          bytes, quantized_tensors, kept_tensors; q8_0_vs_f16_ppl_ratio

and METRICS, the headline: top1_agreement per file type and q8_0_vs_f16_ppl_ratio,
rounded (smolforge/gguf/convert.py). When a figure misses its convert.<model>.gate
threshold the stage fails (exit 2) and writes nothing.

Run by hand:
    python -m stages.convert --model nets --hf models/nets/hf \
        --tokens data/pretokenize/nets --out models/nets/gguf \
        --metrics metrics/convert/nets.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from smolforge.core.cli import StageError, produced_by, run
from smolforge.core.io import atomic_dir, write_json
from smolforge.core.log import setup
from smolforge.core.params import load_params
from smolforge.gguf import export, modelfile, parity
from smolforge.gguf.convert import ConvertParams, check_hf_dir, export_and_compare, headline, parity_examples


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="which params subsection: convert.<model>")
    ap.add_argument("--hf", type=Path, required=True, help="HF model directory")
    ap.add_argument("--tokens", type=Path, required=True, help="pretokenize output folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args(argv)
    setup("convert")
    logging.getLogger("gguf").setLevel(logging.WARNING)  # GGUFWriter logs its write plan at INFO
    section = f"convert.{args.model}"
    p = load_params(section, ConvertParams, args.params)

    # ---- load and check: train's model (config, card, weights), pretokenize's examples
    config = check_hf_dir(args.hf)
    try:  # auto: the model's own context length
        num_ctx = p.modelfile.context(config.get("max_position_embeddings", 0))
    except ValueError as e:
        raise StageError(
            f"{args.params}: {section}.modelfile.{e} ({args.hf}/config.json max_position_embeddings)"
        ) from None
    examples = parity_examples(args.tokens, config.get("vocab_size", 0), p.parity_examples)
    try:
        src = export.load_source(args.hf, name=args.model)  # reads the card before the weights
    except export.ExportError as e:
        raise StageError(f"{args.hf}: {e} {produced_by('train')}") from None

    # ---- export each file type, compare all with HF, gate, then the Modelfile
    with atomic_dir(args.out) as tmp:
        metrics = export_and_compare(src, tmp, p.file_types, examples, p.threads)
        failures = parity.gate_failures(metrics, p.gate, p.file_types)
        if failures:
            raise StageError(
                f"parity gate ({args.params}: {section}.gate) failed for {args.hf}; nothing written:\n  "
                + "\n  ".join(failures)
            )
        mf, tok = p.modelfile, src.tokenizer
        text = modelfile.build(
            f"model-{mf.file_type}.gguf", tok.chat_template, src.card.task, tok.bos_token, tok.eos_token,
            mf.temperature, num_ctx, name=args.model,
        )  # fmt: skip
        (tmp / "Modelfile").write_text(text, encoding="utf-8")
        write_json(tmp / "parity.json", metrics)
    write_json(args.metrics, headline(metrics))


if __name__ == "__main__":
    raise SystemExit(run(main))
