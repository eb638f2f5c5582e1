"""Stage report: one readable page per run, REPORT.md, with its plots as PNG files.

Reads what the other stages wrote, for every model that train wrote a live folder for:
METRICS/train/<model>/ (dvclive: headline figures and loss series), METRICS/evaluate/<model>/
(headline figures and tables), METRICS/convert/<model>.json (GGUF parity),
EVALUATED/<model>/details.json and answers.md, and the timing files METRICS/**/*_timing.json.
Adds the git commit, whether code or params differ from it, the machine, and the params that
differ from the committed params.yaml (what `dvc exp run -S` changed).

Writes OUT (REPORT.md) and PLOTS/<model>_<plot>.png, rendered offline (smolforge/report/plots.py).
Both are committed to git, not DVC outputs: they name the commit and the machine, which
change without any input changing (see dvc.yaml).

Run by hand:
    python -m stages.report --metrics metrics --evaluated data/evaluate --out REPORT.md --plots report
"""

from __future__ import annotations

import argparse
from pathlib import Path

from smolforge.core.cli import run
from smolforge.core.io import atomic_dir, atomic_file
from smolforge.core.log import setup
from smolforge.core.params import load_params
from smolforge.report import card, gather, plots
from smolforge.report.gather import ReportParams


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    for name in ("metrics", "evaluated", "out", "plots"):
        ap.add_argument(f"--{name}", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("report")
    p = load_params("report", ReportParams, args.params)

    # ---- read every model's files (all checked before any write)
    models = gather.read_models(args.metrics, args.evaluated)
    prov = gather.provenance()
    changed = gather.params_changed(args.params)
    times = gather.timings(args.metrics)

    # ---- render the plots, then the page
    pngs: dict[str, bytes] = {}
    names: dict[str, list[str]] = {}
    for m in models:
        for file, spec in plots.specs(m, p.plot_width).items():
            pngs[file] = plots.render(spec)
            names.setdefault(m.name, []).append(file)
    text = card.render(
        prov, changed, times, models, names, (str(args.metrics), str(args.evaluated)), p.sample_answers
    )

    # ---- write
    with atomic_dir(args.plots) as tmp:
        for file, png in pngs.items():
            (tmp / file).write_bytes(png)
    with atomic_file(args.out) as f:
        f.write(text)
    log.info("%s: %d models, %d plots, %d params changed", args.out, len(models), len(pngs), len(changed))


if __name__ == "__main__":
    raise SystemExit(run(main))
