"""The nets track's evaluate step: how well a model reduces nets, judged by the exact reducer.

Sets come from generate's folder (test, ood, stratified12) or from a user's JSONL file
of nets (records with at least "net"; "id" optional). Decoding is batched greedy with a
KV cache. The `step` and `pass` shapes are iterated: each output line is fed back as the
next prompt until the model writes its last line, or the step limit floor(n^2/4) + 1 is
reached (no net needs more; the limit never looks at the answer). Every verdict comes
from smolforge.nets.layouts.check_trace, never from the model's own claims.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from smolforge.core.card import ModelCard
from smolforge.core.cli import StageError, produced_by
from smolforge.core.evaluation import Evaluation, rounded
from smolforge.core.io import meta_count, read_jsonl, read_meta
from smolforge.nets import layouts, reducer

FAILURES = ("malformed", "wrong_rewrite", "stopped_early", "looped")
SETS = ("test", "ood", "stratified12")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    threads: int
    max_test: int  # evaluate at most this many nets per set (<= 0: all)

    def check(self) -> list[str]:
        return [f"{k}: expected >= 1" for k in ("batch_size", "threads") if getattr(self, k) < 1]


def read_nets(path: Path, stage: str | None, expected: int | None = None) -> list[dict]:
    """Records with a parseable "net"; `stage` names who wrote the file (None: the user)."""
    origin = produced_by(stage) if stage else '(a nets JSONL file: one {"net": "A B ..."} per line)'
    out = []
    records = read_jsonl(path, stage or "evaluate", required=("net",), expected=expected)
    for lineno, rec in enumerate(records, 1):
        net = reducer.parse(str(rec["net"]))
        if net is None:
            raise StageError(f'{path}:{lineno}: field "net": {rec["net"]!r} is not a net {origin}')
        out.append({"id": str(rec.get("id", f"line-{lineno}")), "net": net})
    return out


def read_sets(src: Path, max_test: int) -> dict[str, list[dict]]:
    """generate's held-out sets, or a user's nets file as the one set "test"."""
    if src.is_dir():
        meta = read_meta(src, "generate", versions=(1,))
        sets = {name: read_nets(src / f"{name}.jsonl", "generate", meta_count(meta, name)) for name in SETS}
    else:
        sets = {"test": read_nets(src, None)}
    return {k: v[:max_test] for k, v in sets.items()} if max_test > 0 else sets


def load_model(hf_dir: Path, card: ModelCard):
    """Model, tokenizer and layout of a nets model directory written by train."""
    if card.task.task != "nets":
        raise StageError(
            f"{hf_dir / 'smolforge.json'}: model was trained for task {card.task.task!r}, not nets"
        )
    from smolforge.core import tokenizer
    from smolforge.core.hf import load_trained

    layout = layouts.Layout.read(card.task.layout, f"{hf_dir}/smolforge.json: task", "train")
    return load_trained(hf_dir), tokenizer.load(hf_dir), layout


def solve(
    model, tok, layout: layouts.Layout, items: list[dict], batch_size: int
) -> list[tuple[list[str], bool]]:
    """The model's output lines for each net, and whether decoding hit the step limit."""
    from smolforge.core.decode import greedy

    def encode(state_text: str) -> list[int]:
        msgs = [{"role": "user", "content": state_text}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]

    def run_batch(texts: list[str], budgets: list[int]) -> list[tuple[str, bool]]:
        outs = greedy(
            model, [encode(t) for t in texts], budgets, tok.pad_token_id, tok.eos_token_id, batch_size
        )
        return [(tok.decode(ids, skip_special_tokens=True), ended) for ids, ended in outs]

    # lines a trace may take: a rewrite each, the normal net's own line without marks
    n_max = [reducer.max_steps(len(it["net"])) + 1 + (not layout.marks) for it in items]
    if layout.trace == "full":
        budgets = [(k + 1) * (len(it["net"]) + 3) for k, it in zip(n_max, items)]
        budgets = [min(b, model.config.max_position_embeddings) for b in budgets]
        texts = run_batch([reducer.to_text(it["net"]) for it in items], budgets)
        return [(text.split("\n"), not ended) for text, ended in texts]

    lines: list[list[str]] = [[] for _ in items]
    looped = [False] * len(items)
    active = {i: it["net"] for i, it in enumerate(items)}  # the state each net is at
    while active:
        idx = list(active)
        prompts = [layouts.prompt(active[i], layout) for i in idx]
        outs = run_batch(prompts, [len(items[i]["net"]) + 4 for i in idx])
        for i, (text, ended) in zip(idx, outs):
            lines[i].append(text)
            state = layouts.read_line(text, layout)
            if not ended or state is None or not layouts.more_follow(text, active[i], state, layout):
                del active[i]
            elif len(lines[i]) >= n_max[i]:
                looped[i] = True
                del active[i]
            else:
                active[i] = state
    return list(zip(lines, looped))


def summarize(verdicts: list) -> dict:
    n = len(verdicts)
    return {
        "n": n,
        "final_answer_accuracy": round(sum(v.correct for v in verdicts) / n, 4) if n else 0.0,
        "valid_trace_rate": round(sum(v.valid for v in verdicts) / n, 4) if n else 0.0,
        "exact_trace_accuracy": round(sum(v.exact for v in verdicts) / n, 4) if n else 0.0,
    }


def by_length(items: list[dict], verdicts: list) -> dict:
    groups = defaultdict(list)
    for it, v in zip(items, verdicts):
        groups[len(it["net"])].append(v)
    return {str(n): summarize(groups[n]) for n in sorted(groups)}


def prediction(name: str, item: dict, lines: list[str], v) -> dict:
    return {
        "set": name,
        "id": item["id"],
        "net": reducer.to_text(item["net"]),
        "output": lines,
        "answer": reducer.to_text(reducer.reduce(item["net"]).normal_form),
        "correct": v.correct,
        "valid": v.valid,
        "exact": v.exact,
        "failure": v.failure,
    }


def details_of(results: dict) -> dict:
    """Everything measured, by set and by length (OUT/details.json, a plain output)."""
    test_items, test_verdicts = results["test"]
    failures = Counter(v.failure for v in test_verdicts if v.failure)
    out = {
        "test": summarize(test_verdicts),
        "test_by_length": by_length(test_items, test_verdicts),
        "failures": {kind: failures.get(kind, 0) for kind in FAILURES},
    }
    for name in ("ood", "stratified12"):
        if name in results:
            out[name] = summarize(results[name][1])
            out[f"{name}_by_length"] = by_length(*results[name])
    return out


def metrics_of(results: dict) -> dict:
    """The headline figures (LIVE/metrics.json): test accuracy, beyond-training lengths
    (ood), the 12-token stratified set, and the failure count; at most 10, flat."""
    test_verdicts = results["test"][1]
    metrics = {**summarize(test_verdicts), "failed": sum(1 for v in test_verdicts if v.failure)}
    if "ood" in results:
        ood = summarize(results["ood"][1])
        metrics |= {"ood_final_answer_accuracy": ood["final_answer_accuracy"], "ood_n": ood["n"]}
        metrics["ood_valid_trace_rate"] = ood["valid_trace_rate"]
    if "stratified12" in results:
        metrics["stratified12_solved"] = sum(v.correct and v.valid for v in results["stratified12"][1])
        metrics["stratified12_n"] = len(results["stratified12"][1])
    return rounded(metrics)


def evaluate(src: Path, hf_dir: Path, card: ModelCard, p: EvaluateParams, log) -> Evaluation:
    """Decode every net of every set, judge each trace, and tabulate."""
    sets = read_sets(src, p.max_test)
    model, tok, layout = load_model(hf_dir, card)
    import torch

    torch.set_num_threads(p.threads)
    t0 = time.perf_counter()
    results, rows = {}, []
    for name, items in sets.items():
        outputs = solve(model, tok, layout, items, p.batch_size)
        verdicts = [
            layouts.check_trace(it["net"], lines, layout.trace, layout.strategy, looped, layout)
            for it, (lines, looped) in zip(items, outputs)
        ]
        results[name] = (items, verdicts)
        rows += [prediction(name, it, lines, v) for it, (lines, _), v in zip(items, outputs, verdicts)]
        log.info("%s: %s", name, summarize(verdicts))

    metrics = metrics_of(results)
    table = [
        {"set": name, "length": int(length), **m}
        for name in ("test", "ood")
        if name in results
        for length, m in by_length(*results[name]).items()
    ]
    y = ["final_answer_accuracy", "valid_trace_rate", "exact_trace_accuracy"]
    summary = (
        f"final-answer accuracy {metrics['final_answer_accuracy']:.4f}, valid traces "
        f"{metrics['valid_trace_rate']:.4f} on {metrics['n']} test nets ({time.perf_counter() - t0:.0f} s)"
    )
    return Evaluation(
        metrics,
        {"accuracy_by_length": (table, "length", y)},
        {"details.json": details_of(results), "predictions.jsonl": rows},
        summary,
    )
