"""Position-coupling probe for the nets `pass` shape: can the model rewrite nets far longer
than any training line if each answer symbol shares its position id with the prompt symbol
it is rewritten from?

Outside the pipeline on purpose (like tools/length_probe.py): one symbol per token, packed
training lines drawn on the fly from random nets of lengths 1..--maxlen (lines at most
--frame symbols), loss on the answer only, the nets model's shape (smolforge.core.model).

Layout (border on, blanks on, no marks): prompt `BOS . s_1 .. s_n SEP`, answer
`. r_1 .. r_n EOS`, where r_j is s_j after one pass. Position ids: prompt symbol i at
`off + i`, SEP at the slot right of the last symbol (it is the right border), answer symbol
i at `off + i + couple`. The token that predicts r_j is answer symbol j - 1, so the three
inputs r_j depends on sit at relative positions couple - 1 .. couple + 1 from it, whatever
the net's length. `--gaps G`: in a packed line, the position ids jump by a random 0..G at
each separator between two nets (prompt and answer alike), so training sees relative
distances far beyond the line's width.

    python tools/coupling_probe.py --steps 1500 --gaps 160 --test 21,42,64,100
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from smolforge.core.model import LlamaShape, build, llama_config  # noqa: E402
from smolforge.nets import reducer  # noqa: E402

VOCAB = {c: i for i, c in enumerate("ABCD_.")}
SEP, EOS, BOS, PAD = 6, 7, 8, 9
SYMBOL = {i: c for c, i in VOCAB.items()}


def pass_line(state: str) -> str:
    """One parallel pass with annihilated pairs kept as "__" ("_" stays "_")."""
    out, i = [], 0
    while i < len(state):
        pair = state[i : i + 2]
        if pair in dict(reducer.RULES):
            out.append(dict(reducer.RULES)[pair] or "__")
            i += 2
        else:
            out.append(state[i])
            i += 1
    return "".join(out)


def positions(src: str, gaps: list[int], a) -> tuple[list[int], int]:
    """Position ids of `. src` (gaps[i] added from symbol i on) and SEP's position."""
    pos, shift = [], 0
    for i in range(len(src) + 1):
        shift += gaps[i]
        pos.append(a.off + i + shift)
    return pos, pos[-1] + 1


def example(parts: list[str], a, rng: random.Random):
    """(ids, position ids, prompt length) of one packed training line."""
    src = ".".join(p or "_" for p in parts)
    line = ".".join(pass_line(p) if p else "_" for p in parts)
    gaps = [0] * (len(src) + 1)
    if a.gaps:
        for i, c in enumerate("." + src):
            if i > 0 and c == ".":
                gaps[i + 1] += rng.randint(0, a.gaps)  # the next net starts further on
    p_pos, sep_pos = positions(src, gaps, a)
    ids = [BOS] + [VOCAB[c] for c in "." + src] + [SEP] + [VOCAB[c] for c in "." + line] + [EOS]
    a_pos = [q + a.couple for q in p_pos]
    pos = [0] + p_pos + [sep_pos] + a_pos + [a_pos[-1] + 1]
    return ids, pos, len(src) + 3


def packed_lines(a, rng: random.Random):
    def states():
        while True:
            yield from reducer.parallel_trace(reducer.sample_net(rng, rng.randint(1, a.maxlen)))

    source = states()
    while True:
        width, parts = rng.randint(1, a.frame), [next(source)]
        while True:
            nxt = next(source)
            if sum(len(p) + 1 for p in parts) + max(len(nxt), 1) > width:
                break
            parts.append(nxt)
        yield parts


def train(a, rng: random.Random):
    shape = LlamaShape(a.dim, a.layers, 4, 4, 3 * a.dim, 4096, a.rope_theta)
    model = build(llama_config(shape, 10, BOS, EOS, PAD), a.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.1)
    lines, t0 = packed_lines(a, rng), time.time()
    for step in range(a.steps):
        warm = min(1.0, (step + 1) / 200)
        lr = a.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * step / a.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = [example(next(lines), a, rng) for _ in range(a.batch)]
        T = max(len(ids) for ids, _, _ in batch)
        x, y = torch.full((a.batch, T), PAD), torch.full((a.batch, T), -100)
        pos = torch.zeros((a.batch, T), dtype=torch.long)
        for i, (ids, p, k) in enumerate(batch):
            x[i, : len(ids)], pos[i, : len(ids)] = torch.tensor(ids), torch.tensor(p)
            y[i, k - 1 : len(ids) - 1] = torch.tensor(ids[k:])
        logits = model(input_ids=x, position_ids=pos).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 250 == 0 or step == a.steps - 1:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    return model.eval()


@torch.no_grad()
def greedy(model, states: list[str], a) -> list[tuple[str, bool]]:
    """One pass of each state, decoded greedily with coupled positions and a KV cache."""
    from transformers import DynamicCache

    prompts = [[BOS] + [VOCAB[c] for c in "." + s] + [SEP] for s in states]
    T = max(len(p) for p in prompts)
    x = torch.full((len(states), T), PAD)
    pos = torch.zeros((len(states), T), dtype=torch.long)
    mask = torch.zeros((len(states), T), dtype=torch.long)
    for r, (p, s) in enumerate(zip(prompts, states)):
        p_pos, sep_pos = positions(s, [0] * (len(s) + 1), a)
        x[r, T - len(p) :] = torch.tensor(p)
        pos[r, T - len(p) :] = torch.tensor([0] + p_pos + [sep_pos])
        mask[r, T - len(p) :] = 1
    cache = DynamicCache()
    out = model(input_ids=x, position_ids=pos, attention_mask=mask, past_key_values=cache, use_cache=True)
    budget = max(len(s) for s in states) + 2
    new = []
    for t in range(budget):
        nxt = out.logits[:, -1].argmax(-1)  # (B,)
        new.append(nxt)
        mask = torch.cat([mask, torch.ones((len(states), 1), dtype=torch.long)], 1)
        step_pos = torch.full((len(states), 1), a.off + t + a.couple)  # answer symbol t
        out = model(
            input_ids=nxt[:, None], position_ids=step_pos, attention_mask=mask, past_key_values=cache, use_cache=True
        )
    gen = torch.stack(new, 1).tolist()
    texts = []
    for g in gen:
        ended = EOS in g
        g = g[: g.index(EOS)] if ended else g
        texts.append(("".join(SYMBOL.get(t, "?") for t in g), ended))
    return texts


def accuracy(model, a, n: int) -> float:
    rng = random.Random(999 + n)
    tests = [reducer.sample_net(rng, n) for _ in range(a.ntest)]
    state, final, active = list(tests), [None] * len(tests), list(range(len(tests)))
    for k in range(reducer.max_steps(n) + 2):
        if not active:
            break
        outs = []
        for s in range(0, len(active), a.eval_batch):
            chunk = active[s : s + a.eval_batch]
            outs += greedy(model, [state[i] or "_" for i in chunk], a)
        if a.show and k == 0:
            for i, (text, ended) in list(zip(active, outs))[: a.show]:
                print(f"  {state[i]} -> {text!r} ended={ended}")
        still = []
        for i, (text, ended) in zip(active, outs):
            body = text[1:].replace("_", "")
            if not ended or not text.startswith(".") or any(c not in "ABCD" for c in body):
                continue
            if body != state[i]:
                state[i] = body
                still.append(i)
            else:
                final[i] = body
        active = still
    return sum(f == reducer.reduce(t).normal_form for f, t in zip(final, tests)) / len(tests)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--couple", type=int, default=-1, help="answer position - prompt position")
    ap.add_argument("--off", type=int, default=2, help="position id of the prompt's border")
    ap.add_argument("--gaps", type=int, default=0, help="random position jump at separators, 0..G")
    ap.add_argument("--frame", type=int, default=48, help="longest packed line, in symbols")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rope-theta", type=float, default=1e4)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--maxlen", type=int, default=21)
    ap.add_argument("--test", default="21,42,64,100")
    ap.add_argument("--ntest", type=int, default=100)
    ap.add_argument("--eval-batch", type=int, default=128)
    ap.add_argument("--show", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rng = random.Random(a.seed)
    model = train(a, rng)
    for n in (int(v) for v in a.test.split(",")):
        t0 = time.time()
        print(f"length {n}: final-answer accuracy {accuracy(model, a, n):.3f} ({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
