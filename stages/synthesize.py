"""Stage synthesize: LLM-written conversations and QA pairs from any OpenAI-compatible server.

Task `conversations` (chat-builder): one plain completion per word of a word list (and
sample), continuing a prompt that ends with the student's label; the dialogue is parsed
into turns and kept if well formed (see smolforge/llm/synth.py). Task `qa` (essay QA): for
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
smolforge/llm/cache.py): a rerun asks only for requests it has no answer to, and the
output is rebuilt from it, the same whichever way an answer came (see
smolforge/llm/synthesize.py). METRICS gets the counts and yields, TIMING what varies by
run (requests made, cache hits, tokens/s).

Run by hand:
    python -m stages.synthesize --scrape data/scrape --out data/synthesize \
        --cache .cache/synthesize --metrics metrics/synthesize.json \
        --timing metrics/synthesize_timing.json
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from smolforge.core.cli import run
from smolforge.core.io import atomic_dir, meta_count, read_jsonl, read_meta, write_json, write_jsonl
from smolforge.core.log import setup
from smolforge.core.params import load_params
from smolforge.llm import client, tasks
from smolforge.llm.synthesize import Endpoint, SynthesizeParams, synthesize

FORMAT_VERSION = 1  # of OUT/meta.json and the JSONL files


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
    logging.getLogger(client.httpx.__name__).setLevel(logging.WARNING)  # one INFO line per request otherwise
    p = load_params("synthesize", SynthesizeParams, args.params)

    # ---- load and check: everything that can fail does so before any request or write
    words = tasks.read_words(p.conversations.words) if "conversations" in p.tasks else []
    # the documents are passed through whatever the tasks: format@chat reads this one folder
    smeta = read_meta(args.scrape, "scrape", [1])
    docs = read_jsonl(
        args.scrape / "pages.jsonl", "scrape", ("id", "title", "text"), meta_count(smeta, "documents")
    )
    endpoint = Endpoint(p)  # the embedded model file and the API key are checked here

    # ---- ask (from the cache where it can, else the server) and build the records
    t0 = time.monotonic()
    done = synthesize(p, words, docs, endpoint, args.cache)

    # ---- write: outputs do not depend on the cache; what does goes to TIMING
    meta = {"format_version": FORMAT_VERSION, "produced_by": "synthesize", "model": p.model}
    meta |= {"endpoint": endpoint.name, "counts": done.counts}
    if "qa" in p.tasks:  # the voice the QA answers were written in: format@chat's default persona
        meta["persona"] = p.qa.persona
    with atomic_dir(args.out) as tmp:
        write_jsonl(tmp / "conversations.jsonl", done.conversations)
        write_jsonl(tmp / "qa.jsonl", done.qa)
        write_jsonl(tmp / "documents.jsonl", docs)
        write_json(tmp / "meta.json", meta)
    write_json(args.metrics, done.counts)
    s = done.stats
    timing = {
        "elapsed_s": round(time.monotonic() - t0, 3),
        "server_start_s": round(endpoint.start_s, 3),
        "requests_made": s.requests,  # retries included
        "from_cache": s.from_cache,
        "retries": s.retries,
        "failed": done.n_failed,
        "tokens_in": s.tokens_in,  # of the answers received in this run
        "tokens_out": s.tokens_out,
        "ask_s": round(s.seconds, 3),
        "waited_s": round(s.waited_s, 3),
        "tokens_per_s": done.tokens_per_s(),
    }
    write_json(args.timing, timing)
    log.info("%s", done.summary())


if __name__ == "__main__":
    raise SystemExit(run(main))
