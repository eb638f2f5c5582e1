"""Stage evaluate: measure what a model learned.

The model card (smolforge.json, written by train) names the task, which picks the track
that does the work:

    nets  how well the model reduces nets, judged by the exact reducer, on generate's
          held-out sets or on any JSONL file of nets a user wants to try
          (smolforge/nets/evaluate.py)
    chat  validation loss of the finetune and of its base on the same held-out tokens,
          and both models' answers to a fixed prompt set (smolforge/chat/evaluate.py)

Writes LIVE/, a dvclive folder (smolforge/core/live.py): metrics.json with the headline
figures (about 10, what `dvc metrics diff` and `dvc exp show` compare) and
plots/custom/<table>.json (nets: accuracy_by_length; chat: val_loss_per_example), and
OUT/ with the rest (nets: details.json, every set by length and the failures by kind, and
predictions.jsonl with every net, the model's lines and the verdict; chat: details.json,
answers.jsonl and answers.md).

Run by hand:
    python -m stages.evaluate --model nets --hf models/nets/hf --in data/generate \
        --gguf models/nets/gguf --live metrics/evaluate/nets --out data/evaluate/nets
    python -m stages.evaluate --model nets --hf models/nets/hf --in my_nets.jsonl \
        --live /tmp/my_live --out /tmp/my_eval           # add --gguf models/nets/gguf for llama.cpp
    python -m stages.evaluate --model chat --hf models/chat/hf --in data/pretokenize/chat \
        --live metrics/evaluate/chat --out data/evaluate/chat
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from smolforge.core import live
from smolforge.core.card import read_card
from smolforge.core.cli import StageError, produced_by, run
from smolforge.core.io import atomic_dir, write_json, write_jsonl
from smolforge.core.log import setup
from smolforge.core.params import load_params

# the library module that evaluates each task; dvc.yaml's evaluate@<model> depends on its package
TRACKS = {"nets": "smolforge.nets.evaluate", "chat": "smolforge.chat.evaluate"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="which params subsection: evaluate.<model>")
    ap.add_argument("--hf", type=Path, required=True)
    ap.add_argument("--in", dest="src", type=Path, required=True, help="the sets (see above)")
    ap.add_argument("--gguf", type=Path, help="the model's GGUF folder (convert's OUT): nets decode it in llama.cpp too")
    for name in ("live", "out"):
        ap.add_argument(f"--{name}", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("evaluate")

    # ---- the model card picks the track; params and inputs are checked before any work
    if not (args.hf / "config.json").is_file():
        raise StageError(f"{args.hf}: not a trained model directory {produced_by('train')}")
    card = read_card(args.hf)
    track = importlib.import_module(TRACKS[card.task.task])
    p = load_params(f"evaluate.{args.model}", track.EvaluateParams, args.params)

    # ---- measure
    done = track.evaluate(args.src, args.hf, card, p, log, args.gguf)

    # ---- write: the plain outputs, then the live folder (headline figures and tables)
    with atomic_dir(args.out) as tmp:
        for name, content in done.files.items():
            if isinstance(content, str):
                (tmp / name).write_text(content, encoding="utf-8")
            elif isinstance(content, dict):
                write_json(tmp / name, content)
            else:
                write_jsonl(tmp / name, content)
    live.write(args.live, {}, done.metrics, done.tables)
    log.info("%s", done.summary)


if __name__ == "__main__":
    raise SystemExit(run(main))
