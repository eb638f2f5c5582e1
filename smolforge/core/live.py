"""dvclive, DVC's own logger, set up the one way every stage here uses it.

A live folder is dvclive's layout: `metrics.json` (the summary: the latest value of each
metric plus `step`, what `dvc metrics` and `dvc exp show` read, also while a stage runs),
`plots/metrics/<name>.tsv` (one `step<TAB><name>` row per logged step, what `dvc plots`
draws) and `plots/custom/<name>.json` (tables: a JSON list of rows).

dvclive is kept offline and inside its folder: no Studio (DVC_STUDIO_OFFLINE unless the
user set it), no `dvc exp save` of its own (`save_dvc_exp=False`: `dvc exp run` and
`dvc repro` record the run), no dvc.yaml of its own (`dvcyaml=None`: dvc.yaml declares the
folder), no report. dvclive appends as it goes, which is what makes a run visible while
it trains; the finished folder is written again as a whole with `write` (atomic, and a
pure function of the rows, so the same run gives the same bytes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from smolforge.core.io import atomic_dir

SUMMARY = "metrics.json"


def open_live(folder: Path, resume: bool):
    """A dvclive Live on `folder`; `resume` keeps what is there (see `write`)."""
    os.environ.setdefault("DVC_STUDIO_OFFLINE", "true")
    from dvclive import Live

    return Live(str(folder), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)


def log_step(live, step: int, values: dict[str, float]) -> None:
    """Log `values` at training step `step` and update the summary (`dvc exp show` reads it)."""
    live.step = step
    for name, value in values.items():
        live.log_metric(name, value)
    live.make_summary()


def write(
    folder: Path,
    series: dict[str, list[tuple[int, float]]],
    summary: dict[str, Any],
    tables: dict[str, tuple[list[dict], str, list[str]]] | None = None,
) -> None:
    """Write a whole live folder atomically through dvclive's own writers.

    series: metric name -> [(step, value), ...] in step order (plots/metrics/<name>.tsv);
    summary: the figures of metrics.json besides `step` (the last step of any series);
    tables: name -> (rows, x, y columns), each written as plots/custom/<name>.json.
    """
    events = sorted((step, name, value) for name, rows in series.items() for step, value in rows)
    with atomic_dir(folder) as tmp:
        live = open_live(tmp, resume=False)
        for step, name, value in events:
            live.step = step
            live.log_metric(name, value)
        for name, (rows, x, y) in (tables or {}).items():
            live.log_plot(name, rows, x=x, y=y)
        live.summary = dict(summary)
        live.make_summary()  # adds `step`, the last step logged, when there is one
