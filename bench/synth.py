"""Synthesis throughput on the embedded llama.cpp server: requests in flight vs one at a time.

The sides ask the pipeline's own client (smolforge.llm.client.ask_all, the request cache in a
temporary file) for plain completions of the conversations prompt of params.yaml, each
side and round with its own words and seeds (so nothing comes from the cache), and count
completion tokens per second of wall time:

  1 at a time:  one server (synthesize.embedded.n_threads), concurrency 1 (the old default)
  2 in flight:  the same server, concurrency 2
  2 replicas:   two such servers, concurrency 2 (the default: embedded.replicas 2)
  2 threads:    one server with 2 llama.cpp threads, one request at a time

llama-cpp-python's server answers one request at a time (a global lock in
llama_cpp/server/app.py), so two requests in flight need two servers.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

from bench.common import Row, interleave, median, meets, paired_ratio, timed
from smolforge.core.params import load_params
from smolforge.llm import server, synth
from smolforge.llm.cache import RequestCache
from smolforge.llm.client import AskStats, Client, Request, RetryPolicy, Sampling, ask_all
from smolforge.llm.synthesize import SynthesizeParams

ROOT = Path(__file__).resolve().parent.parent
WORDS = "apple river candle window garden ladder mirror pencil basket kettle harbor lantern".split()


def run(quick: bool) -> list[Row]:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    p = load_params("synthesize", SynthesizeParams, ROOT / "params.yaml")
    c, e = p.conversations, p.embedded
    n_req, rounds, max_tokens = (4, 2, 32) if quick else (6, 3, 48)
    sampling = Sampling(c.sampling.temperature, c.sampling.top_p, max_tokens, list(c.sampling.stop))
    prompt = "\n".join(c.prompt_lines)
    gguf = Path(e.gguf) if e.gguf else server.smollm2_gguf()
    policy = RetryPolicy(p.timeout_s, 0, 0.0, 0.0, 0.0)
    made = {"n": 0}

    def requests() -> list[Request]:
        made["n"] += 1  # a fresh set every call: other words and seeds, never a cache hit
        words = [WORDS[(made["n"] * n_req + i) % len(WORDS)] for i in range(n_req)]
        return [
            Request(
                p.model,
                sampling,
                synth.request_seed(p.seed, "bench", w, made["n"]),
                synth.fill(prompt, word=w),
            )
            for w in words
        ]

    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        tmp = Path(d)

        def start(name: str, threads: int) -> tuple[str, str]:
            running = stack.enter_context(
                server.serve(gguf, p.model, threads, e.n_ctx, e.startup_timeout_s, tmp / f"{name}.log")
            )
            return running.base_url, running.api_key

        def client(*servers: tuple[str, str]) -> Client:
            c = Client(*servers[0], policy, replicas=servers[1:])
            stack.callback(c.close)
            return c

        a, b = start("a", e.n_threads), start("b", e.n_threads)
        one, both, two_threads = client(a), client(a, b), client(start("c", 2))
        cache = stack.enter_context(RequestCache(tmp / "requests.jsonl"))

        def pipeline(client: Client, concurrency: int) -> float:
            stats, reqs = AskStats(), requests()
            out: dict = {}
            dt = timed(lambda: out.update(ask_all(reqs, cache, "bench", lambda: client, concurrency, stats)))
            return sum(r.completion_tokens for r in out.values()) / dt

        sides = {
            "1 at a time": lambda: pipeline(one, 1),
            "2 in flight": lambda: pipeline(one, 2),
            "2 replicas": lambda: pipeline(both, 2),
            "2 threads": lambda: pipeline(two_threads, 1),
        }
        for warm in (one, client(b), two_threads):  # a server's first prompt is evaluated whole
            warm.ask(requests()[0])
        got = interleave(sides, rounds)
    base = median(got["1 at a time"])
    rows = []
    for name, target in (("2 in flight", ">= 1.5"), ("2 replicas", ">= 1.5"), ("2 threads", "")):
        v = median(got[name])
        rows.append(
            Row(
                f"synthesis on the embedded server: {name} vs 1 at a time",
                round(v, 1),
                round(base, 1),
                "tok/s",
                round(paired_ratio(got, name, "1 at a time"), 2),
                target,
                meets(paired_ratio(got, name, "1 at a time"), target),
                f"SmolLM2-135M Q4_1, {n_req} completions of <= {max_tokens} tokens per side and round",
                {name: got[name], "1 at a time": got["1 at a time"]},
            )
        )
    return rows
