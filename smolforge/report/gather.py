"""What the report card reads: the run's provenance (git, machine, params changed) and every
model's figures, from the files the other stages wrote. No track code is imported: the
report reads JSON and TSV files the way `dvc metrics show` does, so it depends on
smolforge/core and smolforge/report alone.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smolforge.core.cli import StageError, produced_by

# files the stages change as they run: not what makes a workspace "dirty" for the report
OWN_OUTPUTS = ("metrics", "dvc.lock", "REPORT.md", "report")


@dataclass(frozen=True)
class ReportParams:
    """Stage report's params section."""

    sample_answers: int  # rows of each model's answers.md quoted in the report (0: none)
    plot_width: int  # pixels, of each PNG plot

    def check(self) -> list[str]:
        errors = [] if self.sample_answers >= 0 else ["sample_answers: expected >= 0"]
        return errors + ([] if self.plot_width >= 100 else ["plot_width: expected >= 100"])


@dataclass
class Model:
    """One model's figures; a file a stage did not write for this model stays empty."""

    name: str
    train: dict = field(default_factory=dict)  # metrics/train/<model>/metrics.json
    evaluate: dict = field(default_factory=dict)  # metrics/evaluate/<model>/metrics.json
    convert: dict = field(default_factory=dict)  # metrics/convert/<model>.json
    details: dict = field(default_factory=dict)  # data/evaluate/<model>/details.json
    answers: list[str] = field(default_factory=list)  # rows of data/evaluate/<model>/answers.md
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # train step series
    tables: dict[str, list[dict]] = field(default_factory=dict)  # evaluate's custom plot tables


def read_json(path: Path, stage: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path}: file not found {produced_by(stage)}") from None
    except json.JSONDecodeError as e:
        raise StageError(f"{path}:{e.lineno}: not valid JSON ({e.msg}) {produced_by(stage)}") from None


def read_tsv(path: Path, stage: str) -> list[tuple[float, float]]:
    """dvclive's step series: a `step<TAB>name` header, then one row a step."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], 2):
        try:
            step, value = line.split("\t")
            rows.append((float(step), float(value)))
        except ValueError:
            raise StageError(f"{path}:{lineno}: expected step<TAB>value {produced_by(stage)}") from None
    return rows


def read_model(name: str, metrics: Path, evaluated: Path) -> Model:
    """Every figure of model `name` that the stages wrote."""
    m = Model(name, train=read_json(metrics / "train" / name / "metrics.json", f"train@{name}"))
    live = metrics / "train" / name / "plots/metrics"
    m.series = {p.stem: read_tsv(p, f"train@{name}") for p in sorted(live.glob("*.tsv"))}
    if (metrics / "evaluate" / name / "metrics.json").is_file():
        m.evaluate = read_json(metrics / "evaluate" / name / "metrics.json", f"evaluate@{name}")
        custom = metrics / "evaluate" / name / "plots/custom"
        m.tables = {p.stem: read_json(p, f"evaluate@{name}") for p in sorted(custom.glob("*.json"))}
    if (metrics / "convert" / f"{name}.json").is_file():
        m.convert = read_json(metrics / "convert" / f"{name}.json", f"convert@{name}")
    if (evaluated / name / "details.json").is_file():
        m.details = read_json(evaluated / name / "details.json", f"evaluate@{name}")
    if (evaluated / name / "answers.md").is_file():
        m.answers = (evaluated / name / "answers.md").read_text(encoding="utf-8").splitlines()
    return m


def read_models(metrics: Path, evaluated: Path) -> list[Model]:
    """The models train wrote a live folder for, by name."""
    names = sorted(p.parent.name for p in (metrics / "train").glob("*/metrics.json"))
    if not names:
        raise StageError(f"{metrics}/train/<model>/metrics.json: no model trained yet {produced_by('train')}")
    return [read_model(n, metrics, evaluated) for n in names]


def timings(metrics: Path) -> dict[str, float]:
    """Seconds per stage, from the timing files the stages keep out of dvc.lock."""
    out = {}
    for path in sorted(metrics.rglob("*_timing.json")):
        t = json.loads(path.read_text(encoding="utf-8"))
        seconds = t.get("wall_s", t.get("elapsed_s"))
        if isinstance(seconds, (int, float)):
            stage = path.stem.removesuffix("_timing")
            name = f"{path.parent.name}@{stage}" if path.parent != metrics else stage
            out[name] = round(float(seconds), 1)
    return out


def git(*args: str) -> str | None:
    """A git command's output in the working directory, or None without git or a repo."""
    if shutil.which("git") is None:
        return None
    res = subprocess.run(["git", *args], capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else None


def provenance() -> dict[str, str]:
    """The commit, whether code or params differ from it, and the machine."""
    commit = git("rev-parse", "--short=12", "HEAD")
    dirty = git("status", "--porcelain", "--", ".", *(f":!{p}" for p in OWN_OUTPUTS))
    return {
        "commit": commit.strip() if commit else "unknown (no git repository)",
        "dirty": "unknown" if dirty is None else ("yes" if dirty.strip() else "no"),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "gpu": gpu(),
        "system": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu() -> str:
    """GPU names from nvidia-smi (torch is not imported: it costs seconds), or none."""
    if shutil.which("nvidia-smi") is None:
        return "none"
    res = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
    )
    names = [n.strip() for n in res.stdout.splitlines() if n.strip()]
    return ", ".join(names) if res.returncode == 0 and names else "none"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix: node}


def params_changed(params_path: Path | str) -> list[tuple[str, Any, Any]]:
    """(key, committed value, this run's value) for each param that differs from the
    committed params.yaml: what `dvc exp run -S` changed (none without git)."""
    params_path = Path(params_path)
    committed = git("show", f"HEAD:./{os.path.relpath(params_path)}")
    if committed is None:
        return []
    before = flatten(yaml.safe_load(committed) or {})
    after = flatten(yaml.safe_load(params_path.read_text(encoding="utf-8")) or {})
    return [
        (k, before.get(k), after.get(k))
        for k in sorted(before.keys() | after.keys())
        if before.get(k) != after.get(k)
    ]
