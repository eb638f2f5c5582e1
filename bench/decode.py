"""Evaluate's decoding (smolforge.core.decode.greedy: batched, KV cache) vs naive decoding.

Naive: one prompt at a time, each new token by a full forward over the whole sequence
so far (no cache), greedy. Both decode the same prompts with the same budgets and stop
at EOS; the figure is generated tokens per second. The model is the trained
models/nets/hf when it exists, else a fresh one of train.nets' shape (its greedy
tokens are as good a workload: speed does not depend on the weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.common import Row, interleave, median, meets, paired_ratio, timed
from smolforge.core import model as model_lib
from smolforge.core.decode import greedy
from smolforge.core.params import load_params
from smolforge.core.train import TrainParams
from smolforge.nets.evaluate import EvaluateParams

ROOT = Path(__file__).resolve().parent.parent


def load_model():
    hf = ROOT / "models/nets/hf"
    if (hf / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(hf)).eval(), "models/nets/hf"
    p = load_params("train.nets", TrainParams, ROOT / "params.yaml")
    config = model_lib.llama_config(p.model, 268, 1, 2, 0)
    return model_lib.to_hf(model_lib.build(config, p.seed)).eval(), "a fresh train.nets-shaped model"


def naive(model, prompts: list[list[int]], budgets: list[int], eos_id: int) -> list[list[int]]:
    out = []
    with torch.no_grad():
        for prompt, budget in zip(prompts, budgets):
            ids, new = list(prompt), []
            for _ in range(budget):
                logits = model(input_ids=torch.tensor([ids])).logits  # (1, T, V): every position again
                nxt = int(logits[0, -1].argmax())
                if nxt == eos_id:
                    break
                ids.append(nxt)
                new.append(nxt)
            out.append(new)
    return out


def run(quick: bool) -> list[Row]:
    ep = load_params("evaluate.nets", EvaluateParams, ROOT / "params.yaml")
    torch.set_num_threads(ep.threads)
    model, source = load_model()
    cfg = model.config
    # prompts shaped like evaluate's `pass` requests: BOS, a net of n symbols, a newline
    rng = np.random.default_rng(0)
    n_prompts, rounds = (32, 3) if quick else (96, 5)
    lengths = rng.integers(1, 22, size=n_prompts)
    prompts = [
        [cfg.bos_token_id] + rng.integers(3, cfg.vocab_size, size=int(n) + 1).tolist() for n in lengths
    ]
    budgets = [int(n) + 4 for n in lengths]  # evaluate's budget for one pass line
    pad, eos = cfg.pad_token_id, cfg.eos_token_id
    batch = min(ep.batch_size, n_prompts)
    results = {}

    def batched() -> float:
        dt = timed(lambda: results.__setitem__("batched", greedy(model, prompts, budgets, pad, eos, batch)))
        return sum(len(ids) + ended for ids, ended in results["batched"]) / dt

    def slow() -> float:
        dt = timed(lambda: results.__setitem__("naive", naive(model, prompts, budgets, eos)))
        return sum(len(ids) + (len(ids) < b) for ids, b in zip(results["naive"], budgets)) / dt

    got = interleave({"batched": batched, "naive": slow}, rounds)
    same = sum(ids == n for (ids, _), n in zip(results["batched"], results["naive"]))
    a, b, r = median(got["batched"]), median(got["naive"]), paired_ratio(got, "batched", "naive")
    return [
        Row(
            f"evaluate decoding (batch {batch}, KV cache) vs naive re-forward",
            round(a),
            round(b),
            "tok/s",
            round(r, 1),
            ">= 10",
            meets(r, ">= 10"),
            f"{n_prompts} prompts, {ep.threads} thread(s), {source}; same tokens for {same}/{n_prompts} prompts",
            got,
        )
    ]
