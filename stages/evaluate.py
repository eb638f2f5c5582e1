"""Stage evaluate: measure what a model learned.

The model's smolforge.json names its task. A `chat` model is measured on held-out data
and a fixed prompt set, against its base (see `evaluate_chat` below). A `nets` model is
measured on how well it reduces nets, with the exact reducer:

Reads the HF model directory (train's OUT; its smolforge.json names the trace shape and
strategy) and either generate's folder (test, ood, stratified12) or any JSONL file of
nets (records with at least "net"; "id" optional) a user wants to try.

Decoding is batched greedy with a KV cache. The `step` shape is iterated: each output
line is fed back as the next prompt until the model writes a line without ` =`, or the
step limit floor(n^2/4) + 1 is reached (no net needs more; the limit never looks at the
answer). Every verdict comes from smolforge.netsformat.check_trace, never from the
model's own claims.

Writes METRICS (JSON), PLOT (accuracy by length, CSV) and OUT/predictions.jsonl (every
net with the model's lines and the verdict).

Run by hand:
    python -m stages.evaluate --model chat --hf models/chat/hf --in data/pretokenize/chat \
        --metrics metrics/evaluate/chat.json --plot metrics/evaluate/chat_val_loss.csv \
        --out data/evaluate/chat
    python -m stages.evaluate --model nets --hf models/nets/hf --in data/generate \
        --metrics metrics/evaluate/nets.json --plot metrics/evaluate/nets_by_length.csv \
        --out data/evaluate/nets
    python -m stages.evaluate --model nets --hf models/nets/hf --in my_nets.jsonl \
        --metrics /tmp/my_metrics.json --plot /tmp/my_by_length.csv --out /tmp/my_eval
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from smolforge import nets, netsformat
from smolforge.cli import StageError, produced_by, run
from smolforge.io import atomic_dir, atomic_file, meta_count, read_jsonl, read_meta, write_json, write_jsonl
from smolforge.log import setup
from smolforge.params import load_params

FAILURES = ("malformed", "wrong_rewrite", "stopped_early", "looped")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    threads: int
    max_test: int  # evaluate at most this many nets per set (<= 0: all)

    def check(self) -> list[str]:
        return [f"{k}: expected >= 1" for k in ("batch_size", "threads") if getattr(self, k) < 1]


@dataclass(frozen=True)
class ChatEvaluateParams:
    batch_size: int
    threads: int
    max_new_tokens: int  # per answer to a fixed prompt
    prompts: list[str]  # user turns answered by the base and the finetune, side by side

    def check(self) -> list[str]:
        errors = [
            f"{k}: expected >= 1" for k in ("batch_size", "threads", "max_new_tokens") if getattr(self, k) < 1
        ]
        return errors + ([] if self.prompts else ["prompts: expected at least one prompt"])


def read_nets(path: Path, stage: str | None, expected: int | None = None) -> list[dict]:
    """Records with a parseable "net"; `stage` names who wrote the file (None: the user)."""
    origin = produced_by(stage) if stage else '(a nets JSONL file: one {"net": "A B ..."} per line)'
    out = []
    records = read_jsonl(path, stage or "evaluate", required=("net",), expected=expected)
    for lineno, rec in enumerate(records, 1):
        net = nets.parse(str(rec["net"]))
        if net is None:
            raise StageError(f'{path}:{lineno}: field "net": {rec["net"]!r} is not a net {origin}')
        out.append({"id": str(rec.get("id", f"line-{lineno}")), "net": net})
    return out


def read_sidecar(hf_dir: Path) -> dict:
    """train's smolforge.json (task fields, tokenizer hash, train params), checked."""
    sidecar, where = hf_dir / "smolforge.json", produced_by("train")
    if not (hf_dir / "config.json").is_file() or not sidecar.is_file():
        raise StageError(f"{hf_dir}: not a trained model directory {where}")
    try:
        info = json.loads(sidecar.read_bytes())
    except json.JSONDecodeError as e:
        raise StageError(f"{sidecar}: not valid JSON ({e.msg}) {where}") from None
    except UnicodeDecodeError as e:
        raise StageError(f"{sidecar}: not valid JSON (not UTF-8: {e.reason}) {where}") from None
    if not isinstance(info, dict) or not isinstance(info.get("task"), dict):
        raise StageError(f'{sidecar}: field "task": expected an object {where}')
    return info


def load_model(hf_dir: Path):
    """Model, tokenizer and task fields from train's output directory."""
    task = read_sidecar(hf_dir)["task"]
    if task.get("task") != "nets":
        raise StageError(
            f"{hf_dir / 'smolforge.json'}: model was trained for task {task.get('task')!r}, not nets"
        )
    from smolforge import tokenizer
    from smolforge.basemodel import load_trained

    return load_trained(hf_dir), tokenizer.load(hf_dir), task


def solve(model, tok, task: dict, items: list[dict], batch_size: int) -> list[tuple[list[str], bool]]:
    """The model's output lines for each net, and whether decoding hit the step limit."""
    from smolforge.decode import greedy

    def encode(state_text: str) -> list[int]:
        msgs = [{"role": "user", "content": state_text}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]

    def run_batch(texts: list[str], budgets: list[int]) -> list[tuple[str, bool]]:
        outs = greedy(
            model, [encode(t) for t in texts], budgets, tok.pad_token_id, tok.eos_token_id, batch_size
        )
        return [(tok.decode(ids, skip_special_tokens=True), ended) for ids, ended in outs]

    layout = netsformat.Layout.of(task)
    # lines a trace may take: a rewrite each, the normal net's own line without marks
    n_max = [nets.max_steps(len(it["net"])) + 1 + (not layout.marks) for it in items]
    if task["trace"] == "full":
        budgets = [(k + 1) * (len(it["net"]) + 3) for k, it in zip(n_max, items)]
        budgets = [min(b, model.config.max_position_embeddings) for b in budgets]
        texts = run_batch([nets.to_text(it["net"]) for it in items], budgets)
        return [(text.split("\n"), not ended) for text, ended in texts]

    lines: list[list[str]] = [[] for _ in items]
    looped = [False] * len(items)
    active = {i: it["net"] for i, it in enumerate(items)}  # the state each net is at
    while active:
        idx = list(active)
        prompts = [netsformat.prompt(active[i], layout) for i in idx]
        outs = run_batch(prompts, [len(items[i]["net"]) + 4 for i in idx])
        for i, (text, ended) in zip(idx, outs):
            lines[i].append(text)
            state = netsformat.read_line(text, layout)
            if not ended or state is None or not netsformat.more_follow(text, active[i], state, layout):
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="which params subsection: evaluate.<model>")
    ap.add_argument("--hf", type=Path, required=True)
    ap.add_argument(
        "--in", dest="src", type=Path, required=True, help="generate's folder or a nets JSONL file"
    )
    for name in ("metrics", "plot", "out"):
        ap.add_argument(f"--{name}", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("evaluate")
    info = read_sidecar(args.hf)
    if info["task"].get("task") == "chat":
        p = load_params(f"evaluate.{args.model}", ChatEvaluateParams, args.params)
        evaluate_chat(args, p, info, log)
    else:
        evaluate_nets(args, load_params(f"evaluate.{args.model}", EvaluateParams, args.params), log)


def evaluate_chat(args, p: ChatEvaluateParams, info: dict, log) -> None:
    """Validation loss of the finetune and of its base on the same held-out tokens, and
    both models' answers to a fixed prompt set (OUT/answers.md, a readable table)."""
    from smolforge import chateval
    from smolforge.tokens import read_split

    # ---- load and check every input first
    meta = read_meta(args.src, "pretokenize", versions=(1,))
    if meta.get("tokenizer_sha256") != info.get("tokenizer_sha256"):
        raise StageError(
            f"{args.src}/meta.json: tokenizer differs from the one {args.hf} was trained with "
            f"{produced_by('pretokenize')}"
        )
    val = read_split(args.src, "val", meta)
    if len(val) == 0:
        raise StageError(f"{args.src}/val.idx: no validation examples {produced_by('pretokenize')}")
    train_params = info.get("train_params", {})
    base = train_params.get("base") if train_params.get("init") in ("lora", "full") else None

    # ---- measure the finetune, then its base, one model in memory at a time
    t0 = time.perf_counter()
    result = chateval.measure(args.hf, base, val, meta, p, info["task"])
    metrics = chateval.summary(result, meta)
    write_json(args.metrics, metrics)
    with atomic_file(args.plot) as f:
        f.write("example,base_loss,finetune_loss,targets\n")
        for i, row in enumerate(result.per_example):
            base_loss = "" if row.base is None else f"{row.base:.6g}"
            f.write(f"{i},{base_loss},{row.finetune:.6g},{row.targets}\n")
    with atomic_dir(args.out) as tmp:
        write_jsonl(tmp / "answers.jsonl", result.answers)
        (tmp / "answers.md").write_text(chateval.answers_table(result.answers), encoding="utf-8")
    log.info(
        "val loss %.4f (ppl %.2f) vs base %s on %d tokens; %d prompts answered (%.0f s)",
        metrics["val_loss"],
        metrics["val_perplexity"],
        f"{metrics['base_val_loss']:.4f}" if base else "-",
        metrics["val_targets"],
        len(result.answers),
        time.perf_counter() - t0,
    )


def evaluate_nets(args, p: EvaluateParams, log) -> None:
    # ---- load and check every input first
    if args.src.is_dir():
        meta = read_meta(args.src, "generate", versions=(1,))
        sets = {
            name: read_nets(args.src / f"{name}.jsonl", "generate", meta_count(meta, name))
            for name in ("test", "ood", "stratified12")
        }
    else:
        sets = {"test": read_nets(args.src, None)}
    if p.max_test > 0:
        sets = {k: v[: p.max_test] for k, v in sets.items()}
    model, tok, task = load_model(args.hf)
    import torch

    torch.set_num_threads(p.threads)

    # ---- decode and judge
    t0 = time.perf_counter()
    results, rows = {}, []
    layout = netsformat.Layout.of(task)
    for name, items in sets.items():
        outputs = solve(model, tok, task, items, p.batch_size)
        verdicts = [
            netsformat.check_trace(it["net"], lines, task["trace"], task["strategy"], looped, layout)
            for it, (lines, looped) in zip(items, outputs)
        ]
        results[name] = (items, verdicts)
        for it, (lines, _), v in zip(items, outputs, verdicts):
            rows.append(
                {
                    "set": name,
                    "id": it["id"],
                    "net": nets.to_text(it["net"]),
                    "output": lines,
                    "answer": nets.to_text(nets.reduce(it["net"]).normal_form),
                    "correct": v.correct,
                    "valid": v.valid,
                    "exact": v.exact,
                    "failure": v.failure,
                }
            )
        log.info("%s: %s", name, summarize(verdicts))

    # ---- write
    test_items, test_verdicts = results["test"]
    metrics = {
        **summarize(test_verdicts),
        "by_length": by_length(test_items, test_verdicts),
        "failures": dict(Counter(v.failure for v in test_verdicts if v.failure)),
    }
    for kind in FAILURES:
        metrics["failures"].setdefault(kind, 0)
    if "ood" in results:
        metrics["ood"] = by_length(*results["ood"])
    if "stratified12" in results:
        metrics["stratified12_solved"] = sum(v.correct and v.valid for v in results["stratified12"][1])
        metrics["stratified12_n"] = len(results["stratified12"][1])
    write_json(args.metrics, metrics)
    with atomic_file(args.plot) as f:
        f.write("set,length,final_answer_accuracy,valid_trace_rate,exact_trace_accuracy,n\n")
        for name in ("test", "ood"):
            if name in results:
                for length, m in by_length(*results[name]).items():
                    f.write(
                        f"{name},{length},{m['final_answer_accuracy']},{m['valid_trace_rate']},"
                        f"{m['exact_trace_accuracy']},{m['n']}\n"
                    )
    with atomic_dir(args.out) as tmp:
        write_jsonl(tmp / "predictions.jsonl", rows)
    log.info(
        "final-answer accuracy %.4f, valid traces %.4f on %d test nets (%.0f s)",
        metrics["final_answer_accuracy"],
        metrics["valid_trace_rate"],
        metrics["n"],
        time.perf_counter() - t0,
    )


if __name__ == "__main__":
    raise SystemExit(run(main))
