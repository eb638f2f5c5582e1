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
from smolforge.nets import layouts, notation, reducer

FAILURES = ("malformed", "wrong_rewrite", "stopped_early", "looped")
SETS = ("test", "ood", "stratified12", "swaps")  # swaps: sets generate wrote before it are skipped
USER_FILE = '(a nets JSONL file: one {"net": "A B ..."} or {"net": "A# #B ..."} per line)'


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    threads: int
    max_test: int  # evaluate at most this many nets per set (<= 0: all)
    gguf_file_types: list[str]  # GGUF exports decoded in llama.cpp beside the HF model ([]: none)
    gguf_max_nets: int  # per set, evenly spaced (<= 0: all); the same nets in HF for the gap

    def check(self) -> list[str]:
        return [f"{k}: expected >= 1" for k in ("batch_size", "threads") if getattr(self, k) < 1]


def read_nets(path: Path, stage: str | None, expected: int | None = None) -> list[dict]:
    """Records with a parseable "net" in either notation (smolforge.nets.notation);
    `stage` names who wrote the file (None: the user, whose file must hold a net)."""
    origin = produced_by(stage) if stage else USER_FILE
    out = []
    records = read_jsonl(path, stage or "evaluate", required=("net",), expected=expected, origin=origin)
    for lineno, rec in enumerate(records, 1):
        text = str(rec["net"])
        written = notation.detect(text)
        net = reducer.parse(notation.to_abcd(text) or "" if written == "ab" else text)
        if net is None:
            raise StageError(f'{path}:{lineno}: field "net": {rec["net"]!r} is not a net {origin}')
        out.append({"id": str(rec.get("id", f"line-{lineno}")), "net": net, "notation": written, "line": lineno})
    if stage is None and not out:
        raise StageError(f"{path}: no nets in this file {origin}")
    return out


def read_sets(src: Path, max_test: int) -> dict[str, list[dict]]:
    """generate's held-out sets, or a user's nets file as the one set "test"."""
    if src.is_dir():
        meta = read_meta(src, "generate", versions=(1,))
        names = [n for n in SETS if n in meta.get("counts", {})]
        sets = {name: read_nets(src / f"{name}.jsonl", "generate", meta_count(meta, name)) for name in names}
    else:
        sets = {"test": read_nets(src, None)}
    return {k: v[:max_test] for k, v in sets.items()} if max_test > 0 else sets


def check_fits(src: Path, sets: dict[str, list[dict]], layout: layouts.Layout, n_ctx: int) -> None:
    """Refuse nets whose decoding would run past the model's context, naming them."""
    long = [(name, it) for name, items in sets.items() for it in items if layouts.context_needed(len(it["net"]), layout) > n_ctx]
    if long:
        name, it = long[0]
        where = f"{src}:{it['line']}" if "line" in it else f"{src}/{name}.jsonl: {it['id']}"
        raise StageError(
            f"{where}: a net of {len(it['net'])} symbols needs {layouts.context_needed(len(it['net']), layout)} "
            f"positions, more than the model's context of {n_ctx} ({len(long)} net(s) are too long; "
            "the longest that fits is " + f"{layouts.longest_fitting(layout, n_ctx)} symbols)"
        )


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


def hf_decoder(model, tok, layout: layouts.Layout, batch_size: int):
    """decode(token lists, budgets) -> [(new ids, ended)] in transformers, batched greedy;
    interleaved, the token lists are the input symbols (smolforge.core.decode)."""
    from smolforge.core.decode import greedy, greedy_interleaved

    def decode(prompts: list[list[int]], budgets: list[int]) -> list[tuple[list[int], bool]]:
        if layout.interleave:
            end = symbol_id(tok, layouts.END)
            return greedy_interleaved(model, prompts, tok.bos_token_id, end, tok.eos_token_id, batch_size)
        return greedy(model, prompts, budgets, tok.pad_token_id, tok.eos_token_id, batch_size)

    return decode


def llama_decoder(decoder, tok, layout: layouts.Layout):
    """The same contract, decoding a GGUF file in llama.cpp (smolforge.core.decode_llama)."""

    def decode(prompts: list[list[int]], budgets: list[int]) -> list[tuple[list[int], bool]]:
        if layout.interleave:
            end = symbol_id(tok, layouts.END)
            return decoder.greedy_interleaved(prompts, tok.bos_token_id, end, tok.eos_token_id)
        return decoder.greedy(prompts, budgets, tok.eos_token_id)

    return decode


def symbol_id(tok, text: str) -> int:
    """The one token of a symbol's text; interleaving needs one token a symbol."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise StageError(f"the model's tokenizer writes {text!r} as {len(ids)} tokens; interleaved nets need one a symbol")
    return ids[0]


def solve(decode, tok, layout: layouts.Layout, items: list[dict], n_ctx: int) -> list[tuple[list[str], bool]]:
    """The model's output lines for each net, and whether decoding hit the step limit;
    `decode` is `hf_decoder` or `llama_decoder`."""
    symbols: dict[str, int] = {}

    def encode(state_text: str) -> list[int]:
        if layout.interleave:  # the input symbols, each its own token, as format wrote them
            return [symbols.setdefault(t, symbol_id(tok, t)) for t in layouts.symbol_texts(state_text)]
        msgs = [{"role": "user", "content": state_text}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]

    def run_batch(texts: list[str], budgets: list[int]) -> list[tuple[str, bool]]:
        outs = decode([encode(t) for t in texts], budgets)
        texts = [tok.decode(ids, skip_special_tokens=True) for ids, _ in outs]
        if layout.interleave:  # every answer symbol was written after a space, the border too
            texts = [t.removeprefix(" ") for t in texts]
        return [(t, ended) for t, (_, ended) in zip(texts, outs)]

    # lines a trace may take: a rewrite each, the normal net's own line without marks
    n_max = [reducer.max_steps(len(it["net"])) + 1 + (not layout.marks) for it in items]
    if layout.trace == "full":
        budgets = [(k + 1) * (len(it["net"]) + 3) for k, it in zip(n_max, items)]
        budgets = [min(b, n_ctx) for b in budgets]
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
    """One net's record in predictions.jsonl, in the notation its file used."""
    written = item.get("notation", "abcd")
    return {
        "set": name,
        "id": item["id"],
        "net": notation.write(reducer.to_text(item["net"]), written),
        "output": [notation.write(line, written) for line in lines],
        "answer": notation.write(reducer.to_text(reducer.reduce(item["net"]).normal_form), written),
        "correct": v.correct,
        "valid": v.valid,
        "exact": v.exact,
        "failure": v.failure,
    }


def details_of(results: dict, gguf: dict) -> dict:
    """Everything measured, by set and by length (OUT/details.json, a plain output), and
    each GGUF file's accuracy in llama.cpp beside HF's on the same nets."""
    test_items, test_verdicts = results["test"]
    failures = Counter(v.failure for v in test_verdicts if v.failure)
    out = {
        "test": summarize(test_verdicts),
        "test_by_length": by_length(test_items, test_verdicts),
        "failures": {kind: failures.get(kind, 0) for kind in FAILURES},
    }
    for name in SETS[1:]:
        if name in results:
            out[name] = summarize(results[name][1])
            out[f"{name}_by_length"] = by_length(*results[name])
    if gguf:
        out["llama_cpp"] = gguf
    return out


def metrics_of(results: dict, gguf: dict) -> dict:
    """The headline figures (LIVE/metrics.json), at most 10, flat: test accuracy, beyond
    the training lengths (ood: all of it and its worst length), the stratified and
    worst-case sets solved, and llama.cpp's accuracy and largest gap to HF."""
    test_verdicts = results["test"][1]
    m = summarize(test_verdicts)
    metrics = {k: m[k] for k in ("final_answer_accuracy", "valid_trace_rate", "exact_trace_accuracy")}
    metrics["failed"] = sum(1 for v in test_verdicts if v.failure)
    if "ood" in results:
        metrics["ood_final_answer_accuracy"] = summarize(results["ood"][1])["final_answer_accuracy"]
        per_length = by_length(*results["ood"]).values()
        metrics["ood_worst_length_accuracy"] = min(g["final_answer_accuracy"] for g in per_length)
    for name in ("stratified12", "swaps"):
        if name in results:
            metrics[f"{name}_solved"] = sum(v.correct and v.valid for v in results[name][1])
    if gguf:
        metrics["llama_cpp_worst_accuracy"] = min(g["final_answer_accuracy"] for g in gguf.values())
        metrics["llama_cpp_max_gap_points"] = max(g["max_gap_points"] for g in gguf.values())
    return rounded(metrics)


def judge(decode, tok, layout: layouts.Layout, items: list[dict], n_ctx: int) -> tuple[list, list]:
    """(outputs, verdicts) of one set decoded by `decode`."""
    outputs = solve(decode, tok, layout, items, n_ctx)
    verdicts = [
        layouts.check_trace(it["net"], lines, layout.trace, layout.strategy, looped, layout)
        for it, (lines, looped) in zip(items, outputs)
    ]
    return outputs, verdicts


def subsample(items: list[dict], k: int) -> list[int]:
    """Indices of `k` evenly spaced items (every length of an ordered set keeps its share)."""
    if k <= 0 or k >= len(items):
        return list(range(len(items)))
    return sorted({round(j * (len(items) - 1) / (k - 1)) for j in range(k)}) if k > 1 else [0]


def on_llama_cpp(gguf_dir: Path, file_type: str, sets: dict, results: dict, tok, layout, p, log) -> dict:
    """Accuracy of one GGUF file decoded by llama.cpp, by set and length, on a subsample,
    beside HF's on the same nets; the largest HF - llama.cpp gap in points."""
    from smolforge.core.decode_llama import LlamaDecoder

    path = gguf_dir / f"model-{file_type}.gguf"
    if not path.is_file():
        raise StageError(f"{path}: file not found {produced_by('convert')} (evaluate.<model>.gguf_file_types)")
    picked = {name: subsample(items, p.gguf_max_nets) for name, items in sets.items()}
    longest = max(len(sets[n][i]["net"]) for n, idx in picked.items() for i in idx)
    seq_tokens = layouts.context_needed(longest, layout) + 8  # prompt and answer
    out, gaps, t0 = {"n": 0}, [], time.perf_counter()
    verdicts_all = []
    with LlamaDecoder(path, min(p.batch_size, 64), seq_tokens, p.threads) as dec:
        decode = llama_decoder(dec, tok, layout)
        for name, idx in picked.items():
            items = [sets[name][i] for i in idx]
            _, verdicts = judge(decode, tok, layout, items, 10**6)
            hf = [results[name][1][i] for i in idx]
            ours, theirs = by_length(items, verdicts), by_length(items, hf)
            out[f"{name}_by_length"] = {
                n: {**g, "hf_final_answer_accuracy": theirs[n]["final_answer_accuracy"]} for n, g in ours.items()
            }
            gaps += [abs(g["final_answer_accuracy"] - theirs[n]["final_answer_accuracy"]) for n, g in ours.items()]
            verdicts_all += verdicts
    out.update(summarize(verdicts_all))
    out["max_gap_points"] = round(100 * max(gaps, default=0.0), 2)
    log.info("llama.cpp %s: %s, largest gap to HF %.2f points (%.0f s)", file_type, summarize(verdicts_all), out["max_gap_points"], time.perf_counter() - t0)
    return out


def evaluate(src: Path, hf_dir: Path, card: ModelCard, p: EvaluateParams, log, gguf_dir: Path | None = None) -> Evaluation:
    """Decode every net of every set in transformers (and the GGUF files in llama.cpp),
    judge each trace, and tabulate."""
    sets = read_sets(src, p.max_test)
    model, tok, layout = load_model(hf_dir, card)
    n_ctx = model.config.max_position_embeddings
    if not src.is_dir():
        check_fits(src, sets, layout, n_ctx)
    for name, items in sets.items():
        over = sum(layouts.context_needed(len(it["net"]), layout) > n_ctx for it in items)
        if over:
            log.warning("%s: %d net(s) need more than the model's context of %d positions", name, over, n_ctx)
    import torch

    torch.set_num_threads(p.threads)
    t0 = time.perf_counter()
    results, rows = {}, []
    decode = hf_decoder(model, tok, layout, p.batch_size)
    for name, items in sets.items():
        outputs, verdicts = judge(decode, tok, layout, items, n_ctx)
        results[name] = (items, verdicts)
        rows += [prediction(name, it, lines, v) for it, (lines, _), v in zip(items, outputs, verdicts)]
        log.info("%s: %s", name, summarize(verdicts))
    hf_s = time.perf_counter() - t0
    gguf = {}
    for ft in p.gguf_file_types if gguf_dir is not None else []:
        gguf[ft] = on_llama_cpp(gguf_dir, ft, sets, results, tok, layout, p, log)

    metrics = metrics_of(results, gguf)
    table = [
        {"set": name, "length": int(length), **m}
        for name in ("test", "ood")
        if name in results
        for length, m in by_length(*results[name]).items()
    ]
    y = ["final_answer_accuracy", "valid_trace_rate", "exact_trace_accuracy"]
    n_test = len(results["test"][1])
    summary = (
        f"final-answer accuracy {metrics['final_answer_accuracy']:.4f}, valid traces "
        f"{metrics['valid_trace_rate']:.4f} on {n_test} test nets ({hf_s:.0f} s)"
    )
    return Evaluation(
        metrics,
        {"accuracy_by_length": (table, "length", y)},
        {"details.json": details_of(results, gguf), "predictions.jsonl": rows},
        summary,
    )
