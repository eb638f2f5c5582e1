"""The chat track's evaluate step: a finetune against its base on the same held-out tokens.

Validation loss of the finetune and of its base on pretokenize's val split (target
tokens only, as in training), and both models' answers to a fixed prompt set
(smolforge.chat.evaluation). With the model's GGUF folder (convert's OUT), the same
prompts go to the GGUF in llama.cpp through `create_chat_completion`, as a user of
llama.cpp or its server would send them, and `gguf_stopped_share` counts the answers that
ended by themselves (`finish_reason: "stop"`) rather than at the token limit. The flat figures of its summary are the headline metrics
(rounded); nested ones (per source) go to OUT/details.json with the rest. Writes the
per-example losses as a table for `dvc plots` and the answers as OUT/answers.jsonl and
OUT/answers.md (a readable table).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from smolforge.chat import evaluation
from smolforge.core import tokens
from smolforge.core.card import ModelCard
from smolforge.core.cli import StageError, produced_by
from smolforge.core.evaluation import Evaluation, rounded
from smolforge.core.io import read_meta

# flat figures of the summary that stay out of the headline (about 10 figures): counts that
# only change with the data, not with the model; they are in OUT/details.json
DETAIL_ONLY = ("val_examples", "prompts", "val_target_bytes", "gguf_file")
GGUF_PREFERENCE = ("q8_0", "f16", "f32")  # the file llama.cpp answers with: the smallest exported


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    threads: int
    max_new_tokens: int  # per answer to a fixed prompt
    prompts: list[str]  # user turns answered by the base and the finetune, side by side

    def check(self) -> list[str]:
        errors = [
            f"{k}: expected >= 1" for k in ("batch_size", "threads", "max_new_tokens") if getattr(self, k) < 1
        ]
        return errors + ([] if self.prompts else ["prompts: expected at least one prompt"])


def read_val(src: Path, card: ModelCard):
    """pretokenize's validation split, made with the tokenizer the model was trained with."""
    meta = read_meta(src, "pretokenize", versions=(tokens.FORMAT_VERSION,))
    if meta.get("tokenizer_sha256") != card.tokenizer_sha256:
        raise StageError(
            f"{src}/meta.json: tokenizer differs from the one the model was trained with {produced_by('pretokenize')}"
        )
    val = tokens.read_split(src, "val", meta)
    if len(val) == 0:
        raise StageError(f"{src}/val.idx: no validation examples {produced_by('pretokenize')}")
    return val, meta.get("val_sources")


def in_llama_cpp(gguf_dir: Path, p: EvaluateParams, card: ModelCard, answers: list[dict], log) -> dict:
    """Answer the fixed prompts with the GGUF in llama.cpp's chat completion (its own chat
    template and end-of-generation tokens, greedy, the model's own context length); each
    answer row gains `gguf` and `gguf_finish_reason`."""
    files = [gguf_dir / f"model-{ft}.gguf" for ft in GGUF_PREFERENCE]
    path = next((f for f in files if f.is_file()), None)
    if path is None:
        raise StageError(f"{gguf_dir}: no model-(q8_0|f16|f32).gguf {produced_by('convert')}")
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=0, n_threads=p.threads, seed=0, verbose=False)
    system = [{"role": "system", "content": card.task.system}] if card.task.system else []
    for row in answers:
        out = llm.create_chat_completion(
            messages=system + [{"role": "user", "content": row["prompt"]}],
            max_tokens=p.max_new_tokens,
            temperature=0.0,
        )
        choice = out["choices"][0]
        row["gguf"], row["gguf_finish_reason"] = choice["message"]["content"], choice["finish_reason"]
    stopped = sum(r["gguf_finish_reason"] == "stop" for r in answers) / max(len(answers), 1)
    log.info("llama.cpp (%s): %d of %d answers ended by themselves", path.name, round(stopped * len(answers)), len(answers))
    return {"gguf_file": path.name, "gguf_stopped_share": round(stopped, 4)}


def source_figures(per_source: dict) -> dict:
    """Each source's loss and bits per byte, finetune and base: what `dvc metrics diff`
    shows per source (counts and byte totals stay in details.json)."""
    keep = ("val_loss", "val_bpb", "base_val_loss", "base_val_bpb")
    return {src: rounded({k: row[k] for k in keep if k in row}) for src, row in per_source.items()}


def g6(v: float | None) -> float | None:
    """A loss to 6 significant digits (None: no base model)."""
    return None if v is None else float(f"{v:.6g}")


def evaluate(src: Path, hf_dir: Path, card: ModelCard, p: EvaluateParams, log, gguf_dir: Path | None = None) -> Evaluation:
    """Measure the finetune, then its base, one model in memory at a time."""
    val, sources = read_val(src, card)
    base = card.base if card.init in ("lora", "full") else None
    t0 = time.perf_counter()
    result = evaluation.measure(hf_dir, base, val, p, card.task, sources=sources)
    details = evaluation.summary(result) | {"per_source": evaluation.per_source(result)}
    if gguf_dir is not None:
        details |= in_llama_cpp(gguf_dir, p, card, result.answers, log)
    metrics = rounded(
        {k: v for k, v in details.items() if not isinstance(v, (dict, list)) and k not in DETAIL_ONLY}
    ) | {"per_source": source_figures(details["per_source"])}
    table = [
        {"example": i, "base_loss": g6(row.base), "finetune_loss": g6(row.finetune), "targets": row.targets}
        for i, row in enumerate(result.per_example)
    ]
    base_loss = f"{metrics['base_val_loss']:.4f}" if base else "-"
    summary = (
        f"val loss {metrics['val_loss']:.4f} (ppl {metrics['val_perplexity']:.2f}) vs base {base_loss} "
        f"on {metrics['val_targets']} tokens; {len(result.answers)} prompts answered "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    return Evaluation(
        metrics,
        {"val_loss_per_example": (table, "example", ["base_loss", "finetune_loss"])},
        {
            "details.json": details,
            "answers.jsonl": result.answers,
            "answers.md": evaluation.answers_table(result.answers),
        },
        summary,
    )
