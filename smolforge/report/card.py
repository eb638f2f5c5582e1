"""The report card, REPORT.md: one readable page per run, rendered from what gather read."""

from __future__ import annotations

from typing import Any

from smolforge.report.gather import Model


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:,.0f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "-" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def figures(title: str, source: str, values: dict) -> list[str]:
    """A two-column table of flat figures, naming the file they came from."""
    if not values:
        return []
    rows = [[k, v] for k, v in sorted(values.items()) if not isinstance(v, (dict, list))]
    return [f"**{title}** (`{source}`)", "", *table(["figure", "value"], rows), ""]


def by_length(name: str, groups: dict) -> list[str]:
    """A details.json `<set>_by_length` dict as one table: length, n, the rates."""
    keys = [k for k in next(iter(groups.values())) if k != "n"]
    rows = [
        [length, g["n"], *(g[k] for k in keys)]
        for length, g in sorted(groups.items(), key=lambda kv: int(kv[0]))
    ]
    return [f"*{name.replace('_', ' ')}*", "", *table(["length", "n", *keys], rows), ""]


def llama_cpp_section(gguf: dict, source: str) -> list[str]:
    """details.json's `llama_cpp`: each GGUF file's final-answer accuracy in llama.cpp by set
    and length, beside the HF model's on the same nets."""
    out = [f"**Accuracy in llama.cpp beside HF, same nets** (`{source}`: llama_cpp)", ""]
    rows = []
    for file_type, d in gguf.items():
        for key, groups in d.items():
            if key.endswith("_by_length"):
                rows += [
                    [file_type, key.removesuffix("_by_length"), int(n), g["n"], g["final_answer_accuracy"], g["hf_final_answer_accuracy"]]
                    for n, g in sorted(groups.items(), key=lambda kv: int(kv[0]))
                ]
    header = ["file", "set", "length", "n", "llama.cpp final answer", "HF final answer"]
    return out + table(header, rows) + [""]


def model_section(
    m: Model, plots: list[str], metrics_dir: str, evaluated_dir: str, samples: int
) -> list[str]:
    out = [f"## Model `{m.name}`", ""]
    out += figures("Training", f"{metrics_dir}/train/{m.name}/metrics.json", m.train)
    out += figures("Evaluation", f"{metrics_dir}/evaluate/{m.name}/metrics.json", m.evaluate)
    if per_source := m.evaluate.get("per_source"):
        keys = sorted({k for v in per_source.values() for k in v})
        out += [f"**By source** (`{metrics_dir}/evaluate/{m.name}/metrics.json`)", ""]
        out += table(["source", *keys], [[s, *(v.get(k) for k in keys)] for s, v in per_source.items()]) + [""]
    details = f"{evaluated_dir}/{m.name}/details.json"
    sets = {k: v for k, v in m.details.items() if isinstance(v, dict) and "n" in v and "_" not in k}
    if sets:
        keys = [k for k in next(iter(sets.values())) if k != "n"]
        out += [
            f"**By set** (`{details}`)",
            "",
            *table(["set", "n", *keys], [[s, v["n"], *(v.get(k) for k in keys)] for s, v in sets.items()]),
            "",
        ]
    for name, groups in m.details.items():
        if name.endswith("_by_length") and groups:
            out += by_length(name, groups)
    if m.details.get("llama_cpp"):
        out += llama_cpp_section(m.details["llama_cpp"], details)
    nested = {
        k: v
        for k, v in m.details.items()
        if isinstance(v, dict)
        and k not in sets
        and not k.endswith("_by_length")
        and k not in ("llama_cpp", "per_source")  # per_source: the table above
    }
    for name, value in nested.items():
        out += figures(name.replace("_", " ").capitalize(), details, value)
    if m.convert:
        kinds = {k: v for k, v in m.convert.items() if isinstance(v, dict)}
        cols = sorted({c for v in kinds.values() for c in v})
        out += [f"**GGUF parity with the HF model** (`{metrics_dir}/convert/{m.name}.json`)", ""]
        out += table(["file type", *cols], [[k, *(v.get(c) for c in cols)] for k, v in kinds.items()]) + [""]
        out += figures(
            "GGUF overall",
            f"{metrics_dir}/convert/{m.name}.json",
            {k: v for k, v in m.convert.items() if k not in kinds},
        )
    if m.answers and samples:
        out += [f"**Sample answers** (`{evaluated_dir}/{m.name}/answers.md`, first {samples})", ""]
        out += m.answers[: 2 + samples] + [""]
    out += [f"![{p}](report/{p})" for p in plots] + ([""] if plots else [])
    return out


def render(
    prov: dict[str, str],
    changed: list[tuple[str, Any, Any]],
    times: dict[str, float],
    models: list[Model],
    plots: dict[str, list[str]],
    dirs: tuple[str, str],
    samples: int,
) -> str:
    """REPORT.md's text."""
    out = [
        "# smolforge report",
        "",
        "Written by stage `report` (`stages/report.py`, `dvc repro report`) from the files each",
        "section names; never edited by hand. Each `dvc exp run` writes its own into its experiment.",
        "",
        "## Run",
        "",
        *table(["", ""], [[k, v] for k, v in prov.items()]),
        "",
        "## Params that differ from the committed params.yaml",
        "",
    ]
    out += table(["param", "committed", "this run"], [list(c) for c in changed]) if changed else ["none"]
    out += ["", "## Time per stage (seconds, from `metrics/**/*_timing.json`)", ""]
    out += table(["stage", "seconds"], [[k, v] for k, v in times.items()]) if times else ["none recorded"]
    out += [""]
    for m in models:
        out += model_section(m, plots.get(m.name, []), dirs[0], dirs[1], samples)
    return "\n".join(out).rstrip() + "\n"
