"""dvc.yaml is the pipeline map: every stage, path, param section and code dependency."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["generate", "scrape", "synthesize", "format", "pretokenize", "train", "convert", "evaluate"]
# written by a stage on purpose without being a DVC output (see the comments in dvc.yaml)
UNDECLARED = {
    "train": {"--state", "--timing"},
    "scrape": {"--cache", "--timing"},
    "synthesize": {"--cache", "--timing"},
}


def expand(name: str, spec: dict) -> list[tuple[str, dict]]:
    """Resolve foreach stages the way DVC does for ${key}, ${item} and ${item.field}."""
    if "foreach" not in spec:
        return [(name, spec)]
    items = spec["foreach"]
    pairs = items.items() if isinstance(items, dict) else [(i, i) for i in items]
    return [
        (f"{name}@{key}", yaml.safe_load(substitute(yaml.safe_dump(spec["do"]), key, item)))
        for key, item in pairs
    ]


def substitute(text: str, key, item) -> str:
    text = text.replace("${key}", str(key))
    if isinstance(item, dict):
        text = re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), text)
    return text.replace("${item}", str(item))


def declared_paths(spec: dict) -> set[str]:
    paths = set(spec.get("deps", []))
    for kind in ("outs", "metrics", "plots"):
        for entry in spec.get(kind, []):
            paths.update(entry if isinstance(entry, dict) else [entry])
    return paths


def smolforge_imports(path: Path, seen: set[str] | None = None) -> set[str]:
    """smolforge/*.py files imported by `path`, transitively (function-level imports too)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("smolforge"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("smolforge")]
        for mod in names:
            file = ROOT / (mod.replace(".", "/") + ".py")
            rel = str(file.relative_to(ROOT))
            if file.is_file() and rel not in seen:
                seen.add(rel)
                smolforge_imports(file, seen)
    if seen:
        seen.add("smolforge/__init__.py")  # importing any submodule runs the package init
    return seen


DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
EXPANDED = [(base, name, spec) for base, s in DVC["stages"].items() for name, spec in expand(base, s)]


def test_the_eight_stages_in_order():
    assert list(DVC["stages"]) == STAGES
    assert len(EXPANDED) == 3 + 5 * 2  # generate, scrape, synthesize; five stages per model


def test_each_stage_runs_its_own_script_and_declares_its_whole_section():
    for base, name, spec in EXPANDED:
        assert spec["cmd"].startswith(f"python -m stages.{base} "), name
        assert f"stages/{base}.py" in spec["deps"], name
        model = name.split("@")[1] if "@" in name else None
        assert spec["params"] == [f"{base}.{model}" if model else base], name
        if model:
            assert f"--model {model}" in spec["cmd"], name


def test_every_path_on_the_command_line_is_declared():
    for base, name, spec in EXPANDED:
        args = shlex.split(spec["cmd"])
        declared = declared_paths(spec)
        for flag, value in zip(args, args[1:]):
            if flag.startswith("--") and flag not in ("--model",) and flag not in UNDECLARED.get(base, set()):
                assert value in declared, f"{name}: {flag} {value} is not in deps/outs/metrics/plots"


def test_every_imported_library_module_is_a_dependency():
    for base, name, spec in EXPANDED:
        needed = smolforge_imports(ROOT / "stages" / f"{base}.py")
        deps = {d for d in spec["deps"] if d.startswith("smolforge/")}
        assert needed == deps, f"{name}: missing {sorted(needed - deps)}, extra {sorted(deps - needed)}"


def test_params_yaml_has_a_section_for_every_stage():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    tiny = yaml.safe_load((ROOT / "tests/fixtures/params.tiny.yaml").read_text())
    for _, _, spec in EXPANDED:
        for section in spec["params"]:
            node, tnode = params, tiny
            for part in section.split("."):
                node, tnode = node[part], tnode[part]
            assert set(node) == set(tnode), f"{section}: tiny params must have the same keys"
