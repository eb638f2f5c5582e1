"""Check all of params.yaml before anything runs: every section with its own stage's typed
loader, and the conflicts between sections (smolforge/core/crosscheck.py), all reported
at once. Exit 0 when the file is sound, else 2 with every problem listed.

Run it before an experiment, with the experiment's own overrides (applied to a copy, as
`dvc exp run -S` applies them, sweeps included; params.yaml is not touched):

    python -m stages.check
    python -m stages.check -S format.chat.chat_style=chat_builder \
        -S pretokenize.chat.tokenizer=sentencepiece -S train.chat.init=scratch
    python -m stages.check --recipe chat-builder      # a documented recipe's set
    python -m stages.check --list                     # the recipes and their sets

It is not a stage of dvc.yaml, on purpose. `dvc exp run` needs no extra stage to run it:
every stage's params loader runs the same conflict check on the whole file, so the first
stage an experiment reruns refuses a conflicting params.yaml before any work, and nothing
in dvc.yaml or dvc.lock changes. A `check` stage would not do that: DVC runs a stage that
no other stage depends on in no promised order, and would skip it under `dvc repro
<target>`; making every stage depend on its output would rewrite every stage's entry in
dvc.lock (a full rerun of a finished pipeline) to guard what the loaders already guard.
"""

from __future__ import annotations

import argparse
import shlex
import importlib
from pathlib import Path
from typing import Any

from smolforge.core import crosscheck, recipes
from smolforge.core.cli import StageError, run
from smolforge.core.log import setup
from smolforge.core.params import convert_section, problems_message, read_yaml
from stages.evaluate import TRACKS as EVALUATE_TRACKS
from stages.format import TRACKS as FORMAT_TRACKS


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument(
        "-S", "--set-param", action="append", default=[], metavar="KEY=VALUE", help="as dvc exp run -S"
    )
    ap.add_argument("--recipe", choices=sorted(recipes.RECIPES), help="add a documented recipe's overrides")
    ap.add_argument("--list", action="store_true", help="print the recipes and their sets, then exit")
    args = ap.parse_args(argv)
    log = setup("check")
    if args.list:
        for r in recipes.RECIPES.values():
            sets = " ".join(f"-S {shlex.quote(o)}" for o in r.overrides) or "(no overrides: dvc repro)"
            print(f"{r.name} ({r.origin}): {r.what}\n    dvc exp run {sets}")
        return

    # ---- the file as the experiment would see it
    overrides = [*(recipes.RECIPES[args.recipe].overrides if args.recipe else ()), *args.set_param]
    variants = recipes.with_overrides(args.params, overrides) if overrides else [([], read_yaml(args.params))]

    # ---- every section, then the conflicts between them
    messages = []
    for chosen, data in variants:
        by_section, clashes = check(data)
        if by_section or clashes:
            head = f"with -S {' -S '.join(chosen)}:\n" if chosen else ""
            messages.append(head + problems_message(args.params, by_section, clashes, hint=False))
    if messages:
        raise StageError("\n".join(messages))
    n = len(sections(read_yaml(args.params)))
    with_s = f" with {len(overrides)} override(s), {len(variants)} combination(s)" if overrides else ""
    log.info("%s%s: %d sections sound, no conflicts between them", args.params, with_s, n)


def check(data: Any) -> tuple[dict[str, list[str]], list[str]]:
    """(problems by section, conflicts between sections) of a parsed params file."""
    problems: dict[str, list[str]] = {}
    if not isinstance(data, dict):
        return {"(file)": [f"expected a mapping of sections, got {type(data).__name__}"]}, []
    for section, cls in sections(data).items():
        if isinstance(cls, str):  # no params class: why
            problems[section] = [cls]
            continue
        _, errors = convert_section(data, section, cls)
        problems[section] = [f"{section}: missing section"] if errors is None else errors
    return {k: v for k, v in problems.items() if v}, crosscheck.conflicts(data)


def sections(data: dict) -> dict[str, Any]:
    """Every section a stage loads, and the params class it loads it with (or, where none
    can be chosen, a string saying why). Per-model sections follow the models of train."""
    from smolforge.core.tokenizer import PretokenizeParams
    from smolforge.core.train import TrainParams
    from smolforge.gguf.convert import ConvertParams
    from smolforge.llm.synthesize import SynthesizeParams
    from smolforge.nets.generate import GenerateParams
    from smolforge.report.gather import ReportParams
    from smolforge.web.scrape import ScrapeParams

    out: dict[str, Any] = {"generate": GenerateParams, "scrape": ScrapeParams, "synthesize": SynthesizeParams}
    train = data.get("train")
    for model in sorted(train) if isinstance(train, dict) else []:
        task = crosscheck.value(data, "format", model, "task")  # picks the track, as stage format does
        if task in FORMAT_TRACKS:
            out[f"format.{model}"] = importlib.import_module(FORMAT_TRACKS[task]).FormatParams
        else:
            known = ", ".join(FORMAT_TRACKS)
            out[f"format.{model}"] = f"format.{model}.task: expected one of {known}, got {task!r}"
        out[f"pretokenize.{model}"] = PretokenizeParams
        out[f"train.{model}"] = TrainParams
        out[f"convert.{model}"] = ConvertParams
        if task in EVALUATE_TRACKS:  # evaluate follows the task the model was trained for
            out[f"evaluate.{model}"] = importlib.import_module(EVALUATE_TRACKS[task]).EvaluateParams
    out["report"] = ReportParams
    return out


if __name__ == "__main__":
    raise SystemExit(run(main))
