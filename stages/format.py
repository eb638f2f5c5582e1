"""Stage format: turn a model's source records into chat examples rendered as text.

The section's `task` picks the track that does the work: `nets` reads generate's splits
(smolforge/nets/format.py), `chat` reads synthesize's folder (smolforge/chat/format.py).
Both write OUT/train.jsonl and OUT/val.jsonl, one example per line:

    {"id", "source", "messages": [{"role", "content"}, ...],
     "segments": [[text, loss], ...]}

`segments` is the example rendered in the chat style; `loss` marks the spans trained on.
OUT/meta.json records the task (smolforge/core/card.py: chat style and template, stop
words, persona, the nets layout) that every later stage reads, and the counts.

Run by hand:
    python -m stages.format --model nets --in data/generate --out data/format/nets \
        --metrics metrics/format/nets.json
    python -m stages.format --model chat --in data/synthesize --out data/format/chat \
        --metrics metrics/format/chat.json
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from smolforge.core.cli import StageError, run
from smolforge.core.io import atomic_dir, write_json, write_jsonl
from smolforge.core.log import setup
from smolforge.core.params import load_params, read_yaml

FORMAT_VERSION = 2  # 2: the task fields are one "task" record (smolforge.core.card.Task)
# the library module that formats each task; dvc.yaml's format@<model> depends on its package
TRACKS = {"nets": "smolforge.nets.format", "chat": "smolforge.chat.format"}


def task_of(params_path: str, model: str) -> str:
    """The `task` of section format.<model>, which picks the track (and its params class)."""
    section = (read_yaml(Path(params_path)) or {}).get("format", {}).get(model)
    task = section.get("task") if isinstance(section, dict) else None
    if task not in TRACKS:
        raise StageError(
            f"{params_path}: format.{model}.task: expected one of {', '.join(TRACKS)}, got {task!r}"
        )
    return task


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="which params subsection: format.<model>")
    ap.add_argument("--in", dest="src", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("format")
    section = f"format.{args.model}"
    track = importlib.import_module(TRACKS[task_of(args.params, args.model)])
    p = load_params(section, track.FormatParams, args.params)

    # ---- load, check and render every input before writing anything
    done = track.format_records(args.src, p, section)

    # ---- write
    with atomic_dir(args.out) as tmp:
        write_jsonl(tmp / "train.jsonl", done.train)
        write_jsonl(tmp / "val.jsonl", done.val)
        write_json(
            tmp / "meta.json",
            {
                "format_version": FORMAT_VERSION,
                "produced_by": "format",
                "task": done.task.to_dict(),
                "bos": done.bos,
                "eos": done.eos,
                "counts": done.counts,
            },
        )
    write_json(args.metrics, {"counts": done.counts})
    log.info("%s", done.summary)


if __name__ == "__main__":
    raise SystemExit(run(main))
