"""dvc.yaml is the pipeline map: every stage, path, param section and code dependency, as DVC resolves it."""

from __future__ import annotations

import ast
import importlib
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = [
    "generate",
    "scrape",
    "synthesize",
    "format",
    "pretokenize",
    "train",
    "convert",
    "evaluate",
    "report",
]
PER_MODEL = STAGES[3:8]
MODELS = ["nets", "chat"]
# written by a stage on purpose without being a DVC output (see the comments in dvc.yaml)
UNDECLARED = {
    "train": {"--state", "--timing"},
    "scrape": {"--cache", "--timing"},
    "synthesize": {"--cache", "--timing"},
    # REPORT.md and report/ are git-tracked, not outputs; it reads the folders' files, which
    # its deps list one by one (the timing files in them on purpose not)
    "report": {"--metrics", "--evaluated", "--out", "--plots"},
}
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def resolved_stages() -> dict[str, dict]:
    """Every stage instance as DVC itself resolves dvc.yaml against params.yaml (foreach,
    ${key}, ${item.field}, ${train} included): name -> {cmd, deps, outs, params}."""
    from dvc.repo import Repo

    out = {}
    with Repo(str(ROOT)) as repo:
        for stage in repo.index.stages:
            params = sorted(k for d in stage.deps if hasattr(d, "params") for k in d.params)
            out[stage.addressing] = {
                "cmd": stage.cmd,
                "deps": [d.def_path for d in stage.deps if not hasattr(d, "params")],
                "outs": [o.def_path for o in stage.outs],
                "params": params,
            }
    return out


RESOLVED = resolved_stages()


def module_file(name: str) -> Path | None:
    """The .py file of a dotted smolforge module (a package's __init__.py), or None."""
    path = ROOT / name.replace(".", "/")
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports(path: Path, seen: set[Path] | None = None) -> set[Path]:
    """smolforge files imported by `path`, transitively (function-level imports too)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("smolforge"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("smolforge")]
        for name in names:
            file = module_file(name)
            if file is not None and file not in seen:
                seen.add(file)
                imports(file, seen)
    return seen


def as_deps(files: set[Path]) -> set[str]:
    """What dvc.yaml declares for those files: a package folder each, but the init modules
    one by one (train depends on its own init's file only), plus smolforge/__init__.py."""
    out = {"smolforge/__init__.py"}
    for f in files:
        rel = f.relative_to(ROOT)
        if rel.parts[1] == "inits" and rel.name != "__init__.py":
            out.add(rel.as_posix())
        elif len(rel.parts) > 2:
            out.add(f"smolforge/{rel.parts[1]}")
    return out


def dispatched(base: str, model: str | None) -> list[str]:
    """The library modules a stage imports by name for this model (its TRACKS / INITS table)."""
    stage = importlib.import_module(f"stages.{base}")
    if hasattr(stage, "TRACKS"):
        return [stage.TRACKS[PARAMS["format"][model]["task"]]]
    if hasattr(stage, "INITS"):
        return [stage.INITS[PARAMS["train"][model]["init"]]]
    return []


def test_the_nine_stages_in_order_one_instance_per_model():
    assert list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]) == STAGES
    expected = {"generate", "scrape", "synthesize", "report"} | {
        f"{s}@{m}" for s in PER_MODEL for m in MODELS
    }
    assert set(RESOLVED) == expected


def test_each_stage_runs_its_own_script_and_declares_its_whole_section():
    for name, spec in RESOLVED.items():
        base, _, model = name.partition("@")
        assert spec["cmd"].startswith(f"python -m stages.{base} "), name
        assert f"stages/{base}.py" in spec["deps"], name
        section = f"{base}.{model}" if model else base
        node = PARAMS
        for part in section.split("."):
            node = node[part]
        assert spec["params"] == [section], name  # the whole section, nothing else
        if model:
            assert f"--model {model}" in spec["cmd"], name


def test_every_path_on_the_command_line_is_declared():
    for name, spec in RESOLVED.items():
        base = name.split("@")[0]
        args = shlex.split(spec["cmd"])
        declared = set(spec["deps"]) | set(spec["outs"])
        flags = [(f, v) for f, v in zip(args, args[1:]) if f.startswith("--") and f != "--model"]
        assert flags, name
        for flag, value in flags:
            if flag == "--live":  # a dvclive folder: declared as its two parts, no overlap
                assert {f"{value}/metrics.json", f"{value}/plots"} <= declared, name
            elif flag not in UNDECLARED.get(base, set()):
                assert value in declared, f"{name}: {flag} {value} is not in deps/outs/metrics/plots"


def test_each_instance_depends_on_exactly_the_code_it_imports():
    for name, spec in RESOLVED.items():
        base, _, model = name.partition("@")
        files = imports(ROOT / "stages" / f"{base}.py")
        for module in dispatched(base, model or None):
            files |= {module_file(module)} | imports(module_file(module))
        needed = as_deps(files)
        declared = {d for d in spec["deps"] if d.startswith("smolforge")}
        assert needed == declared, (
            f"{name}: missing {sorted(needed - declared)}, extra {sorted(declared - needed)}"
        )


def test_a_track_never_depends_on_the_other():
    for name, spec in RESOLVED.items():
        code = {d for d in spec["deps"] if d.startswith("smolforge/")}
        if name.endswith("@nets") or name == "generate":
            assert not code & {
                "smolforge/chat",
                "smolforge/web",
                "smolforge/llm",
                "smolforge/inits/lora.py",
            }, name
        if name.endswith("@chat") or name in ("scrape", "synthesize"):
            assert "smolforge/nets" not in code, name
        if name == "report":  # it reads files; it runs no track's code
            assert code == {"smolforge/__init__.py", "smolforge/core", "smolforge/report"}, name


def test_no_library_module_imports_a_stage_and_core_imports_no_track():
    for path in (ROOT / "smolforge").rglob("*.py"):
        tree = ast.parse(path.read_text())
        mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        rel = path.relative_to(ROOT).as_posix()
        assert not [m for m in mods if m.startswith("stages")], rel
        if rel.startswith("smolforge/core/"):
            assert [m for m in mods if m.startswith("smolforge.")] == [
                m for m in mods if m.startswith("smolforge.core")
            ], rel


@pytest.mark.parametrize("section", PER_MODEL)
def test_tiny_params_have_the_same_keys(section):
    tiny = yaml.safe_load((ROOT / "tests/fixtures/params.tiny.yaml").read_text())
    for model in MODELS:
        assert set(PARAMS[section][model]) == set(tiny[section][model]), f"{section}.{model}"
