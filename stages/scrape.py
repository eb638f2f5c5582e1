"""Stage scrape: crawl a site politely and turn its pages into clean, titled documents.

The source (params: scrape.source) is an http(s) URL of a start page (an essay index,
a blog archive, docs), or a local folder, which the stage serves itself on 127.0.0.1 at
a free port for the duration of the crawl, so both take the same code path. The default
is the small site shipped in sites/essays/, so `dvc repro` runs offline.

Writes OUT/pages.jsonl, one document a line, sorted by URL (the record is described in
smolforge/web/scrape.py):

    {"id", "source": "scrape", "url", "title", "date", "text", "notes", "n_words"}

and OUT/meta.json, which lists every URL skipped or failed and why.

CACHE holds an HTTP cache (ETag / Last-Modified) kept between runs; it never changes the
output. METRICS gets the counts, TIMING what varies by run (requests, cache hits, time).

Run by hand:
    python -m stages.scrape --out data/scrape --cache .cache/scrape \
        --metrics metrics/scrape.json --timing metrics/scrape_timing.json
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from smolforge.core.cli import run
from smolforge.core.io import atomic_dir, write_json, write_jsonl
from smolforge.core.log import setup
from smolforge.core.params import load_params
from smolforge.web.scrape import ScrapeParams, scrape

FORMAT_VERSION = 1  # of OUT/meta.json and pages.jsonl


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True, help="HTTP cache folder, kept between runs")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--timing", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("scrape")
    p = load_params("scrape", ScrapeParams, args.params)

    # ---- crawl, extract, keep the documents
    t0 = time.monotonic()
    done = scrape(p, args.cache)

    # ---- write: outputs do not depend on the cache; what does goes to TIMING
    counts = done.counts()
    meta = {"format_version": FORMAT_VERSION, "produced_by": "scrape", "source": p.source, "counts": counts}
    meta["not_written"] = done.not_written()
    with atomic_dir(args.out) as tmp:
        write_jsonl(tmp / "pages.jsonl", done.documents)
        write_json(tmp / "meta.json", meta)
    write_json(args.metrics, counts)
    timing = {"elapsed_s": round(time.monotonic() - t0, 3), **dataclasses.asdict(done.stats)}
    timing["waited_s"] = round(done.stats.waited_s, 3)
    write_json(args.timing, timing)
    log.info("%s", done.summary())


if __name__ == "__main__":
    raise SystemExit(run(main))
