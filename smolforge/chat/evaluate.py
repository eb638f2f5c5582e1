"""The chat track's evaluate step: a finetune against its base on the same held-out tokens.

Validation loss of the finetune and of its base on pretokenize's val split (target
tokens only, as in training), and both models' answers to a fixed prompt set
(smolforge.chat.evaluation). Writes the per-example losses as the plot and the answers
as OUT/answers.jsonl and OUT/answers.md (a readable table).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from smolforge.chat import evaluation
from smolforge.core import tokens
from smolforge.core.card import ModelCard
from smolforge.core.cli import StageError, produced_by
from smolforge.core.evaluation import Evaluation
from smolforge.core.io import read_meta


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
    return val


def evaluate(src: Path, hf_dir: Path, card: ModelCard, p: EvaluateParams, log) -> Evaluation:
    """Measure the finetune, then its base, one model in memory at a time."""
    val = read_val(src, card)
    base = card.base if card.init in ("lora", "full") else None
    t0 = time.perf_counter()
    result = evaluation.measure(hf_dir, base, val, p, card.task)
    metrics = evaluation.summary(result)
    plot_rows = [
        f"{i},{'' if row.base is None else f'{row.base:.6g}'},{row.finetune:.6g},{row.targets}"
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
        "example,base_loss,finetune_loss,targets",
        plot_rows,
        {"answers.jsonl": result.answers, "answers.md": evaluation.answers_table(result.answers)},
        summary,
    )
