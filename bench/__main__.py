"""Run every benchmark and print a table of ratios, each measured side by side in one run.

    python -m bench                 # everything (about 5-6 minutes on 2 cores)
    python -m bench --quick         # fewer rounds, smaller workloads (about 2-3 minutes)
    python -m bench --only trainer,decode
    python -m bench --only chatstep,scratch   # the chat finetune's step; the scratch Llama vs a GPT
    python -m bench --repo .        # time the no-op dvc repro in a built workspace

Writes the table as JSON to bench/results.json (docs/performance.md cites it) unless --out says
elsewhere. Timings vary from run to run; nothing here is a test and nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

from bench.common import OtherLoad, Row, machine

NAMES = ("matmul", "trainer", "scratch", "chatstep", "decode", "pretokenize", "synthesize", "dvc")


def table(rows: list[Row]) -> str:
    """A markdown table: what, measured, baseline, ratio, target, met."""
    lines = ["| benchmark | measured | baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    for r in rows:
        base = "" if isinstance(r.baseline, float) and math.isnan(r.baseline) else f"{r.baseline:,} {r.unit}"
        ok = {True: "yes", False: "**no**", None: ""}[r.ok]
        lines.append(f"| {r.name} | {r.value:,} {r.unit} | {base} | {r.ratio:,} | {r.target} | {ok} |")
    return "\n".join(lines)


def run_one(name: str, args: argparse.Namespace) -> list[Row]:
    """One benchmark's rows (each module imports torch or starts servers: only on demand)."""
    if name == "matmul":
        from bench import matmul

        return matmul.run(args.quick)
    if name == "trainer":
        from bench import trainer

        return trainer.run(args.quick, args.tokens)
    if name == "scratch":
        from bench import scratch

        return scratch.run(args.quick)
    if name == "chatstep":
        from bench import chatstep

        return chatstep.run(args.quick)
    if name == "decode":
        from bench import decode

        return decode.run(args.quick)
    if name == "pretokenize":
        from bench import pretok

        return pretok.run(args.quick)
    if name == "synthesize":
        from bench import synth

        return synth.run(args.quick)
    from bench import dvc_noop

    return dvc_noop.run(args.quick, args.repo)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and smaller workloads")
    ap.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of {','.join(NAMES)}")
    ap.add_argument("--repo", type=Path, default=None, help="a built workspace for the dvc no-op timing")
    ap.add_argument(
        "--tokens",
        type=Path,
        default=None,
        help="nets token files for the trainer (default: data/pretokenize/nets, else synthetic)",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results.json")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    unknown = only - set(NAMES)
    if unknown:
        ap.error(f"--only: unknown {sorted(unknown)} (known: {', '.join(NAMES)})")
    os.environ.setdefault("LOG_LEVEL", "WARNING")  # the stages some benchmarks run stay quiet
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    info = machine()
    print(f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['when']}", flush=True)
    rows: list[Row] = []
    t0 = time.perf_counter()

    def add(new: list[Row], others: OtherLoad) -> None:
        share = others.share()
        for r in new:  # how busy other processes kept the machine while the row was measured
            r.note = f"{r.note}; other processes used {100 * share:.0f}% of the CPUs".lstrip("; ")
        rows.extend(new)
        for r in new:
            print(f"  {r.name}: {r.ratio:,} ({r.value:,} vs {r.baseline:,} {r.unit}) {r.note}", flush=True)

    for name in NAMES:
        if name in only:
            others = OtherLoad()
            add(run_one(name, args), others)

    info["bench_s"] = round(time.perf_counter() - t0)
    info["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    info["quick"] = args.quick
    print()
    print(table(rows))
    print(f"\n{info['cpu']}, {info['cores']} cores; {info['when']}; {info['bench_s']} s")
    args.out.write_text(json.dumps({"machine": info, "rows": [r.as_dict() for r in rows]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
