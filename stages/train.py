"""Stage train: train a Llama from scratch, or finetune a pretrained one, on pretokenized data.

`init` picks the start: `scratch` (a fresh Llama of shape `model`), `lora` (adapters on
a pretrained `base`, see smolforge/core/pretrained.py) or `full` (every weight of `base`). The
loop, resume, metrics and curves are the same for all three (smolforge/core/train.py).

Reads TOKENS (pretokenize's folder) and writes:
    OUT/            HF model directory (config.json, model.safetensors, tokenizer files,
                    chat template, and the model card smolforge.json: smolforge/core/card.py);
                    for `lora` the merged model, and the adapter alone in OUT/adapter/
    STATE/ckpt.pt   resumable state (a rerun after a crash continues from it)
    LIVE/           dvclive's folder (smolforge/core/live.py): metrics.json, the headline
                    figures, updated while the run trains (`dvc exp show` reads it), and
                    plots/metrics/{train_loss,lr,val_loss}.tsv, the step series `dvc plots` draws
    TIMING          speed figures (kept apart: they vary by run)

Run by hand:
    python -m stages.train --model nets --tokens data/pretokenize/nets \
        --out models/nets/hf --state models/nets/state --live metrics/train/nets \
        --timing metrics/train/nets_timing.json

On N GPUs (or N CPU processes): set `processes: N` and the stage runs itself under
torchrun, or run torchrun by hand (DDP, see smolforge/core/trainloop.py; `batch_size` stays
the global batch; rank 0 alone writes):
    torchrun --standalone --nproc_per_node=N -m stages.train --model nets ...
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

from smolforge.core import card, checkpoint, cpu_kernels, heap, live, precision, tokenizer, tokens, trainloop
from smolforge.core import model as model_lib
from smolforge.core import train as training
from smolforge.core.cli import StageError, produced_by, run
from smolforge.core.io import atomic_dir, read_meta, write_json
from smolforge.core.log import setup
from smolforge.core.params import load_params
from smolforge.core.train import TrainParams

# the library module that builds and saves the model for each init; dvc.yaml's train@<model>
# depends on that module's file alone
INITS = {"scratch": "smolforge.inits.scratch", "lora": "smolforge.inits.lora", "full": "smolforge.inits.full"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="which params subsection: train.<model>")
    for name in ("tokens", "out", "state", "live", "timing"):
        ap.add_argument(f"--{name}", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("train")
    p = load_params(f"train.{args.model}", TrainParams, args.params)

    # ---- load and check inputs before any work
    meta = read_meta(args.tokens, "pretokenize", versions=(tokens.FORMAT_VERSION,))
    task = card.parse_task(meta.get("task"), f"{args.tokens}/meta.json", "pretokenize")
    train_split = tokens.read_split(args.tokens, "train", meta)
    val_split = tokens.read_split(args.tokens, "val", meta)
    if len(train_split) == 0:
        raise StageError(f"{args.tokens}/train.idx: no training examples {produced_by('pretokenize')}")
    # the longest example, validation included: the model is scored on those too.
    # `model.max_seq_len: auto` becomes exactly this (smolforge/core/model.py fit)
    longest = max(meta["counts"][name]["max_example_tokens"] for name in ("train", "val"))
    if p.init == "scratch" and p.model is not None:
        try:
            model_lib.fit(p.model, longest)
        except ValueError as e:
            raise StageError(
                f"{args.params}: train.{args.model}.model.{e} ({args.tokens}/meta.json)"
            ) from None

    if p.processes > 1 and "WORLD_SIZE" not in os.environ:
        # ---- relaunch this very command under torchrun; its ranks do the work
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launch += [f"--nproc_per_node={p.processes}", "-m", "stages.train"]
        log.info("running under torchrun: %d processes", p.processes)
        rc = subprocess.run([*launch, *(sys.argv[1:] if argv is None else argv)]).returncode
        if rc:
            raise StageError(f"torchrun with {p.processes} processes exited with status {rc} (see above)")
        return

    # ---- this process's device and share of the work
    torch.set_num_threads(p.threads)
    heap_kept = heap.keep_freed_memory()  # the step's tensors reuse freed pages (smolforge/core/heap.py)
    d = trainloop.setup(p.device, f"train.{args.model}.device")
    # the scratch Llama's fused CPU kernels, built once per machine (smolforge/core/cpu_kernels.py)
    kernels = p.init == "scratch" and d.device.type == "cpu" and cpu_kernels.load()
    if d.world > 1 and p.batch_size % d.world:
        raise StageError(
            f"params.yaml: train.{args.model}.batch_size {p.batch_size} is the global batch: it must "
            f"divide evenly over the {d.world} processes of torchrun"
        )
    if not d.main:  # rank 0 alone reports
        logging.getLogger().setLevel(logging.WARNING)

    # ---- the model: a fresh Llama or a pretrained base, from the init's own module
    init = importlib.import_module(INITS[p.init])
    model = init.build(p, meta, args.tokens, longest, d.rank)
    model.to(d.device)
    opt = trainloop.optimizer(model, p.lr, p.betas, p.weight_decay)
    token_files = [args.tokens / name for name in ("meta.json", "train.bin", "train.mask")]
    fp = checkpoint.fingerprint(dataclasses.asdict(p), token_files)
    # dtype: auto measures bf16 against float32 here (smolforge/core/precision.py)
    dtype, why = precision.choose(p.dtype, d.device, model.config.hidden_size)
    log.info("dtype %s: %s", dtype, why)
    run_p = dataclasses.replace(p, dtype=dtype)
    job = training.Job(run_p, model, opt, d, train_split, val_split, meta["pad_id"], args.state, fp)

    # ---- resume from a checkpoint of this same run, if one exists; the live folder restarts
    # from the checkpoint's own history, so its step series goes on with no step twice
    progress = training.start(job)
    if d.main:
        training.write_live(args.live, progress)
        job.live = live.open_live(args.live, resume=True)
    n_params = model_lib.n_params(model)
    n_trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    log.info(
        "model: %s parameters (%s trained, init %s); %s training examples",
        f"{n_params:,}",
        f"{n_trainable:,}",
        p.init,
        f"{len(train_split):,}",
    )
    training.fit(job, progress)

    # ---- write the HF directory with its model card, the live folder and timing (rank 0 alone)
    if not d.main:
        return
    job.live.end()
    with atomic_dir(args.out) as tmp:
        model.generation_config.pad_token_id = meta["pad_id"]
        init.save(model, tmp)
        tokenizer.load(args.tokens / "tokenizer").save_pretrained(tmp)
        model_card = card.ModelCard(
            card_version=card.CARD_VERSION,
            task=task,
            tokenizer=meta["tokenizer"],
            tokenizer_sha256=meta["tokenizer_sha256"],
            init=p.init,
            base=p.base if p.init != "scratch" else None,
            train_params=dataclasses.asdict(p),
        )
        card.write_card(tmp, model_card)
    training.write_live(args.live, progress, training.metrics(progress, job, n_params, n_trainable))
    write_json(
        args.timing,
        training.timing(progress, run_p, d)
        | {"dtype_choice": why, "malloc_keeps_freed": heap_kept, "cpu_kernels": kernels},
    )
    final_val = progress.history["val"][-1][1]
    log.info(
        "done: %d steps, %s tokens, val loss %.4f", progress.step, f"{progress.tokens_seen:,}", final_val
    )


if __name__ == "__main__":
    raise SystemExit(run(main))
