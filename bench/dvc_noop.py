"""Wall time of a no-op `dvc repro` after a full run.

By default the project's tracked files are copied into a temporary git + DVC repository
with tests/fixtures/params.tiny.yaml as params.yaml (the e2e test's setup), the whole
pipeline is run once (not timed), and then `dvc repro` is timed while it has nothing to
do: the same 13 stages, dependency and output hashes to check, tiny data. `--repo PATH`
times a workspace that is already built instead (e.g. this project after `dvc repro`).
With --quick only the nets track is built and `dvc repro evaluate@nets` is timed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import Row, median, meets, timed
from smolforge.dev.sandbox import ROOT, new_repo, sh


def run(quick: bool, repo: Path | None = None) -> list[Row]:
    targets = ["evaluate@nets", "convert@nets"] if quick else []
    rounds = 3 if quick else 5
    with tempfile.TemporaryDirectory() as d:
        where = repo
        if where is None:
            where = Path(d)
            new_repo(where, ROOT / "tests/fixtures/params.tiny.yaml")
            sh(where, "dvc", "repro", *targets)  # the full run, not timed
        out = sh(where, "dvc", "status", *targets)
        if "up to date" not in out:
            raise RuntimeError(f"{where}: dvc status is not clean, so a repro would not be a no-op:\n{out}")
        times = []
        outs: list[str] = []
        for _ in range(rounds):
            times.append(timed(lambda: outs.append(sh(where, "dvc", "repro", *targets))))
            if "Running stage" in outs[-1]:
                raise RuntimeError(f"{where}: the second dvc repro ran a stage:\n{outs[-1]}")
    t = median(times)
    what = f"dvc repro {' '.join(targets)}".strip()
    src = str(repo) if repo else "tiny pipeline in a temp repo"
    return [
        Row(
            f"no-op `{what}` after a full run",
            round(t, 2),
            float("nan"),
            "s",
            round(t, 2),
            "<= 3",
            meets(t, "<= 3"),
            src,
            {"s": times},
        )
    ]
