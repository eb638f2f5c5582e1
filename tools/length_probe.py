"""Length-generalization probe for the pass shape: how a layout fares beyond the training
lengths, in minutes instead of a pipeline run.

Outside the pipeline on purpose: one symbol per token (no BPE), examples drawn on the
fly from random nets of lengths 1..--maxlen, loss on the answer only, and greedy decoding
without a KV cache; the model is the nets model's shape (smolforge.core.model). It answers one
question fast: does a layout keep working on nets longer than any it was trained on?
docs/experiments.md gives the figures it measured.

    python tools/length_probe.py --blanks --frame 48 --steps 1500      # about 40 s on a GPU
    python tools/length_probe.py --blanks --frame 48 --no-mark --pack --layers 2

Layouts: --blanks and --frame as format.nets; --no-mark drops the ` =` continuation mark
(decoding stops when a pass changes nothing: format.nets.marks false); --pack fills each
training line with several states, one fill between them, up to the frame or, with
--random-width, up to a width drawn for each line (format.nets.pack); --shift
puts a random number of fill symbols before the net in training prompts, and the same
number before the answer;
--hints K follows each symbol with a token for its index in the line mod K. --dim,
--layers and --rope-theta change the model.
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

from smolforge.nets import reducer as nets  # noqa: E402
from smolforge.core.model import LlamaShape, build, llama_config, to_hf  # noqa: E402

VOCAB = {c: i for i, c in enumerate("ABCD_.=")}
SEP, EOS, BOS, PAD = 7, 8, 9, 10
HINT0 = 11  # --hints K: index hint tokens 11 .. 11+K-1
REWRITE = dict(nets.RULES)


def pass_line(state: str, blanks: bool) -> str:
    """One parallel pass, annihilated pairs as "__" with blanks (compact form)."""
    out, i = [], 0
    while i < len(state):
        pair = state[i : i + 2]
        if pair in REWRITE:
            out.append(REWRITE[pair] or ("__" if blanks else ""))
            i += 2
        else:
            out.append(state[i])
            i += 1
    return "".join(out)


class Layout:
    def __init__(self, a: argparse.Namespace, rng: random.Random):
        self.a, self.rng = a, rng

    def symbols(self, line: str) -> list[int]:
        """A line's tokens; with --hints K each symbol is followed by its index mod K."""
        if not self.a.hints:
            return [VOCAB[c] for c in line]
        return [t for j, c in enumerate(line) for t in (VOCAB[c], HINT0 + j % self.a.hints)]

    def prompt(self, state: str, shift: int = 0) -> list[int]:
        body = self.symbols(state)
        width = self.a.frame * (2 if self.a.hints else 1)  # the frame counts tokens
        return [BOS] + [VOCAB["."]] * shift + body + [VOCAB["."]] * max(0, width - len(body) - shift) + [SEP]

    def example(self, state: str, more_states=None) -> tuple[list[int], int]:
        """(tokens, prompt length) of one training example."""
        if self.a.pack and more_states is not None:
            return self.packed(state, more_states)
        line = pass_line(state, self.a.blanks)
        more = not nets.is_normal(line.replace("_", ""))
        mark = [VOCAB["="]] if more and not self.a.no_mark else []
        shift = self.rng.randint(0, max(0, self.a.frame - len(state))) if self.a.shift else 0
        p = self.prompt(state, shift)
        return p + [VOCAB["."]] * shift + self.symbols(line) + mark + [EOS], len(p)

    def packed(self, state: str, more_states) -> tuple[list[int], int]:
        """--pack: states side by side in one line, one fill between them, until the
        next would overflow the frame (one pass rewrites each on its own)."""
        parts = [state]
        width = self.rng.randint(1, self.a.frame) if self.a.random_width else self.a.frame
        while True:
            nxt = next(more_states)
            if sum(len(p) + 1 for p in parts) + max(len(nxt), 1) > width:
                break
            parts.append(nxt)
        src = ".".join(p or "_" for p in parts)
        line = ".".join(pass_line(p, self.a.blanks) or "_" for p in parts)
        more = any(not nets.is_normal(p) for p in parts) and not self.a.no_mark
        body = self.symbols(src)
        p = [BOS] + body + [VOCAB["."]] * max(0, self.a.frame - len(body)) + [SEP]
        return p + self.symbols(line) + ([VOCAB["="]] if more else []) + [EOS], len(p)


def train(a: argparse.Namespace, layout: Layout, rng: random.Random, device: str):
    V = HINT0 + a.hints
    shape = LlamaShape(a.dim, a.layers, 4, 4, 3 * a.dim, 512, a.rope_theta)
    model = build(llama_config(shape, V, BOS, EOS, PAD), a.seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.1)

    def states():
        while True:
            yield from nets.parallel_trace(nets.sample_net(rng, rng.randint(1, a.maxlen)))

    source, t0 = states(), time.time()
    for step in range(a.steps):
        warm = min(1.0, (step + 1) / 200)  # linear warmup, cosine to a tenth
        lr = a.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * step / a.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = [layout.example(next(source), source) for _ in range(a.batch)]
        T = max(len(ids) for ids, _ in batch)
        x = torch.full((a.batch, T), PAD)
        y = torch.full((a.batch, T), -100)  # loss on the answer only
        for i, (ids, k) in enumerate(batch):
            x[i, : len(ids)] = torch.tensor(ids)
            y[i, k - 1 : len(ids) - 1] = torch.tensor(ids[k:])
        logits = model(input_ids=x.to(device)).logits  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, V), y.to(device).view(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 250 == 0 or step == a.steps - 1:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    return to_hf(model).eval()  # decoding needs transformers (KV cache)


@torch.no_grad()
def greedy(model, prompts: list[list[int]], budget: int, device: str) -> list[tuple[str, bool]]:
    """(text, ended with EOS) per prompt: left-padded, greedy, with the KV cache."""
    symbols = {i: c for c, i in VOCAB.items()}
    T = max(len(p) for p in prompts)
    x = torch.tensor([[PAD] * (T - len(p)) + p for p in prompts], device=device)
    out = model.generate(
        input_ids=x,
        attention_mask=(x != PAD).long(),
        max_new_tokens=budget,
        do_sample=False,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )[:, T:].tolist()
    texts = []
    for o in out:
        ended = EOS in o
        o = o[: o.index(EOS)] if ended else o
        # hint tokens are dropped: only the symbols count
        texts.append(("".join(symbols.get(t, "?") for t in o if t < HINT0), ended))
    return texts


def accuracy(model, a: argparse.Namespace, layout: Layout, n: int, device: str) -> float:
    """Share of fresh length-n nets whose iterated passes end in the true normal form."""
    rng = random.Random(999 + n)
    tests = [nets.sample_net(rng, n) for _ in range(a.ntest)]
    state, final, active = list(tests), [None] * len(tests), list(range(len(tests)))
    for _ in range(nets.max_steps(n) + 2):  # never more passes than rewrites
        if not active:
            break
        outs = greedy(model, [layout.prompt(state[i]) for i in active], 2 * n + 4, device)
        still = []
        if a.show and _ == 0:
            for i, (text, ended) in list(zip(active, outs))[: a.show]:
                print(f"  {state[i]} -> {text!r} ended={ended}")
        for i, (text, ended) in zip(active, outs):
            more = text.endswith("=")
            body = text.removesuffix("=").replace("_", "")
            if not ended or any(c not in "ABCD" for c in body):
                continue  # malformed: wrong
            if a.no_mark:
                more = body != state[i]
            if more:
                state[i] = body
                still.append(i)
            else:
                final[i] = body
        active = still
    return sum(f == nets.reduce(t).normal_form for f, t in zip(final, tests)) / len(tests)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blanks", action="store_true")
    ap.add_argument("--frame", type=int, default=0)
    ap.add_argument("--no-mark", action="store_true")
    ap.add_argument("--shift", action="store_true")
    ap.add_argument("--pack", action="store_true", help="several nets a training line")
    ap.add_argument("--random-width", action="store_true", help="--pack up to a random width a line")
    ap.add_argument("--hints", type=int, default=0, help="index hints mod K (0: none)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rope-theta", type=float, default=1e4)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--maxlen", type=int, default=21, help="longest training net")
    ap.add_argument("--test", default="21,32,42", help="test lengths")
    ap.add_argument("--ntest", type=int, default=200, help="nets per test length")
    ap.add_argument("--show", type=int, default=0, help="print K first-pass outputs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = random.Random(a.seed)
    layout = Layout(a, rng)
    model = train(a, layout, rng, device)
    for n in (int(v) for v in a.test.split(",")):
        print(f"length {n}: final-answer accuracy {accuracy(model, a, layout, n, device):.3f}", flush=True)


if __name__ == "__main__":
    main()
