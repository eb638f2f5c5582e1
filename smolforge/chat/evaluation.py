"""Measuring a chat finetune against its base on the same held-out data and prompts.

Both models are scored on the very same validation tokens (pretokenize's val split, the
target tokens only, as in training) and answer the same fixed prompts, built with the
chat template the finetune was trained with. One model is in memory at a time.

Besides loss and perplexity, both get bits per byte (summed target loss in bits over the
UTF-8 bytes of the target text, which pretokenize counts from the text: comparable across
tokenizers), overall and per source (essays, conversations, qa).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from smolforge.chat.talk import cut_at_stop
from smolforge.core import hf, pretrained, styles, tokenizer, validation
from smolforge.core.card import Task
from smolforge.core.decode import greedy


@dataclass
class Row:
    finetune: float  # mean target loss of one validation example
    base: float | None
    targets: int


@dataclass
class Result:
    per_example: list[Row] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)  # {"prompt", "finetune", "base"}
    sums: dict = field(default_factory=dict)  # model -> (summed loss, targets)
    example_sums: dict = field(default_factory=dict)  # model -> [(summed loss, targets)] per example
    target_bytes: list[int] | None = None  # per example; None for token files without them
    sources: list[str] | None = None  # per example (pretokenize's meta.json val_sources)


def _score_and_answer(model, tok, val, p, prompt_ids, stops):
    losses = validation.example_losses(model, val, p.batch_size, tok.pad_token_id)
    outs = greedy(
        model,
        prompt_ids,
        [p.max_new_tokens] * len(prompt_ids),
        tok.pad_token_id,
        tok.eos_token_id,
        p.batch_size,
    )
    answers = [cut_at_stop(tok.decode(ids, skip_special_tokens=True), stops) for ids, _ in outs]
    return losses, answers


def measure(hf_dir: Path, base: str | None, val, p, task: Task, sources: list[str] | None = None) -> Result:
    """Score the finetune in `hf_dir` and its `base` on `val` and the prompts of `p`;
    `sources` (one per validation example) enables the per-source figures."""
    import torch

    torch.set_num_threads(p.threads)
    hf.quiet_loading()
    tok = tokenizer.load(hf_dir)
    system = task.system
    prompts = [
        ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]
        for q in p.prompts
    ]
    texts = [
        styles.render_text(tok.chat_template, m, tok.bos_token or "", tok.eos_token or "", True)
        for m in prompts
    ]
    prompt_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    stops = list(task.stop)

    model = hf.load_trained(hf_dir)
    ft_losses, ft_answers = _score_and_answer(model, tok, val, p, prompt_ids, stops)
    del model
    base_losses, base_answers = [None] * len(ft_losses), [None] * len(ft_answers)
    if base is not None:
        model = pretrained.load_model(base, "float32")
        base_losses, base_answers = _score_and_answer(model, tok, val, p, prompt_ids, stops)
        del model

    if sources is not None and len(sources) != len(ft_losses):
        raise ValueError(f"{len(sources)} sources for {len(ft_losses)} validation examples")
    result = Result(sources=sources)
    if val.target_bytes is not None:
        result.target_bytes = [int(b) for b in val.target_bytes]
    result.example_sums["finetune"] = ft_losses
    if base is not None:
        result.example_sums["base"] = base_losses
    for (ls, n), b in zip(ft_losses, base_losses):
        result.per_example.append(Row(ls / max(n, 1), None if b is None else b[0] / max(b[1], 1), n))
    result.sums["finetune"] = (sum(s for s, _ in ft_losses), sum(n for _, n in ft_losses))
    if base is not None:
        result.sums["base"] = (sum(s for s, _ in base_losses), sum(n for _, n in base_losses))
    for q, a, b in zip(p.prompts, ft_answers, base_answers):
        result.answers.append({"prompt": q, "finetune": a, "base": b})
    return result


def summary(result: Result) -> dict:
    """Metrics for `dvc metrics diff`: losses, perplexities and their change."""
    total, n = result.sums["finetune"]
    out = {
        "val_loss": round(total / n, 6),
        "val_perplexity": round(math.exp(total / n), 4),
        "val_targets": n,
        "val_examples": len(result.per_example),
        "prompts": len(result.answers),
    }
    if "base" in result.sums:
        b_total, b_n = result.sums["base"]
        out["base_val_loss"] = round(b_total / b_n, 6)
        out["base_val_perplexity"] = round(math.exp(b_total / b_n), 4)
        out["val_loss_change"] = round(total / n - b_total / b_n, 6)
    if result.target_bytes is not None:
        n_bytes = sum(result.target_bytes)
        out["val_target_bytes"] = n_bytes
        out["val_bpb"] = round(validation.bits_per_byte(total, n_bytes), 6)
        if "base" in result.sums:
            out["base_val_bpb"] = round(validation.bits_per_byte(result.sums["base"][0], n_bytes), 6)
            out["val_bpb_change"] = round(out["val_bpb"] - out["base_val_bpb"], 6)
    return out


def per_source(result: Result) -> dict:
    """Per source (essays, conversations, qa, ...): examples, targets, target bytes, and
    each model's loss and bits per byte on them; {} without sources."""
    if result.sources is None:
        return {}
    out = {}
    for src in sorted(set(result.sources)):
        idx = [i for i, s in enumerate(result.sources) if s == src]
        n = sum(result.example_sums["finetune"][i][1] for i in idx)
        row = {"examples": len(idx), "targets": n}
        if result.target_bytes is not None:
            row["target_bytes"] = sum(result.target_bytes[i] for i in idx)
        for model, prefix in (("finetune", ""), ("base", "base_")):
            if model not in result.example_sums:
                continue
            total = sum(result.example_sums[model][i][0] for i in idx)
            row[f"{prefix}val_loss"] = round(total / max(n, 1), 6)
            if result.target_bytes is not None:
                row[f"{prefix}val_bpb"] = round(validation.bits_per_byte(total, row["target_bytes"]), 6)
        out[src] = row
    return out


def answers_table(answers: list[dict]) -> str:
    """A Markdown table: prompt | finetune | base, and the GGUF's answer in llama.cpp with
    how it ended when there is one (newlines and pipes escaped)."""

    def cell(text: str | None) -> str:
        return "-" if text is None else text.replace("|", "\\|").replace("\n", "<br>")

    gguf = any("gguf" in a for a in answers)
    head = ["prompt", "finetune", "base"] + (["GGUF in llama.cpp", "ended"] if gguf else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in answers:
        cells = [a["prompt"], a["finetune"], a["base"]] + ([a.get("gguf"), a.get("gguf_finish_reason")] if gguf else [])
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
