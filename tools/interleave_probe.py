"""Interleaved-layout probe for the nets `pass` shape: can the model rewrite nets far longer
than any training line if it writes each answer symbol right after reading the input
symbols it depends on?

Outside the pipeline on purpose (like tools/length_probe.py): one symbol per token, packed
training lines drawn on the fly from random nets of lengths 1..--maxlen (lines at most
--frame symbols), loss on the answer only, the nets model's shape (smolforge.core.model).

Layout (border and blanks on): the prompt symbols p_0 = ".", p_1 .. p_n and a right border
p_{n+1} = END are interleaved with the answer a_0 .. a_n (a_j is p_j after one pass,
written from p_{j-1}, p_j, p_{j+1}):

    BOS p_0 p_1 a_0 p_2 a_1 ... p_n a_{n-1} END a_n EOS

The token that predicts a_j is p_{j+1}; its inputs sit 0, 2 and 4 tokens back, whatever
the net's length. Decoding feeds the prompt symbols and appends the model's answer
symbols (positions 0, 1, 2, ... as usual). `--gaps G`: in a packed training line the
position ids jump by a random 0..G before each net but the first (still increasing), so
training meets long distances between unrelated tokens.

    python tools/interleave_probe.py --steps 700 --gaps 100 --test 21,64,100
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

from smolforge.core.model import LlamaShape, build, llama_config, to_hf  # noqa: E402
from smolforge.nets import reducer  # noqa: E402

VOCAB = {c: i for i, c in enumerate("ABCD_.")}
END, EOS, BOS, PAD = 6, 7, 8, 9
SYMBOL = {i: c for c, i in VOCAB.items()}


def pass_line(state: str) -> str:
    """One parallel pass with annihilated pairs kept as "__" ("_" stays "_")."""
    rules, out, i = dict(reducer.RULES), [], 0
    while i < len(state):
        pair = state[i : i + 2]
        if pair in rules:
            out.append(rules[pair] or "__")
            i += 2
        else:
            out.append(state[i])
            i += 1
    return "".join(out)


def example(parts: list[str], a, rng: random.Random):
    """(ids, position ids, targets) of one packed training line."""
    src = "." + ".".join(p or "_" for p in parts)
    line = "." + ".".join(pass_line(p) if p else "_" for p in parts)
    p = [VOCAB[c] for c in src] + [END]
    ans = [VOCAB[c] for c in line]
    ids, tgt = [BOS, p[0]], [-100, -100]
    for j in range(len(ans)):
        ids += [p[j + 1], ans[j]]
        tgt += [ans[j], -100]  # p_{j+1} predicts a_j
    tgt[-1] = EOS  # a_n predicts EOS
    ids.append(EOS)
    tgt.append(-100)
    pos, shift = [], 0
    for k, t in enumerate(ids):
        # a jump before each net's first symbol but the first net's (k: p_{j+1} sits at 2j+2)
        if a.gaps and k >= 4 and k % 2 == 0 and (k - 2) // 2 + 1 < len(src) and src[(k - 2) // 2] == "." and (k - 2) // 2 > 0:
            shift += rng.randint(0, a.gaps)
        pos.append(k + shift)
    # targets are shifted by one in the loss: tgt[k] is what the token at k predicts
    return ids, pos, tgt


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
    shape = LlamaShape(a.dim, a.layers, 4, 4, 3 * a.dim, 8192, a.rope_theta)
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
        for i, (ids, p, t) in enumerate(batch):
            x[i, : len(ids)], pos[i, : len(ids)], y[i, : len(ids)] = torch.tensor(ids), torch.tensor(p), torch.tensor(t)
        logits = model(input_ids=x, position_ids=pos).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == a.steps - 1:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    return to_hf(model).eval()  # decoding needs transformers (KV cache)


@torch.no_grad()
def one_pass(model, states: list[str]) -> list[tuple[str, bool]]:
    """One pass of each state: feed its symbols, read the answer symbol after each."""
    from transformers import DynamicCache

    B = len(states)
    srcs = [[VOCAB[c] for c in "." + (s or "_")] + [END] for s in states]  # p_0 .. p_{n+1}
    n_max = max(len(p) for p in srcs) - 2  # the largest n
    feed = lambda j: torch.tensor([p[j] if j < len(p) else END for p in srcs])  # noqa: E731
    cache = DynamicCache()
    x = torch.stack([torch.full((B,), BOS), feed(0), feed(1)], 1)
    logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits
    answers, ended, alive = [[] for _ in states], [False] * B, [True] * B
    for j in range(n_max + 2):
        # logits[:, -1] follow p_{j+1}: a_j; logits[:, 0] (j >= 1) follow a_{j-1}: EOS after a_n
        if j >= 1:
            after = logits[:, 0].argmax(-1).tolist()
            for r in range(B):
                if alive[r] and len(answers[r]) == len(srcs[r]) - 1:  # a_n written
                    ended[r], alive[r] = after[r] == EOS, False
        if j > n_max:
            break
        nxt = logits[:, -1].argmax(-1)
        for r, t in enumerate(nxt.tolist()):
            if alive[r] and len(answers[r]) < len(srcs[r]) - 1:
                if t not in SYMBOL:
                    alive[r] = False  # EOS or END where a symbol belongs: malformed
                else:
                    answers[r].append(t)
        x = torch.stack([nxt, feed(j + 2)], 1)
        logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits
    return [("".join(SYMBOL[t] for t in ans), e) for ans, e in zip(answers, ended)]


def accuracy(model, a, n: int) -> float:
    rng = random.Random(999 + n)
    tests = [reducer.sample_net(rng, n) for _ in range(a.ntest)]
    state, final, active = list(tests), [None] * len(tests), list(range(len(tests)))
    for k in range(reducer.max_steps(n) + 2):
        if not active:
            break
        outs = []
        for s in range(0, len(active), a.eval_batch):
            outs += one_pass(model, [state[i] for i in active[s : s + a.eval_batch]])
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
    ap.add_argument("--gaps", type=int, default=0, help="random position jump before each packed net, 0..G")
    ap.add_argument("--frame", type=int, default=48, help="longest packed line, in symbols")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rope-theta", type=float, default=1e4)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--maxlen", type=int, default=21)
    ap.add_argument("--test", default="21,64,100")
    ap.add_argument("--ntest", type=int, default=100)
    ap.add_argument("--eval-batch", type=int, default=256)
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
