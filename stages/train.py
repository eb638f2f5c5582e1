"""Stage train: train a Llama from scratch, or finetune a pretrained one, on pretokenized data.

`init` picks the start: `scratch` (a fresh Llama of shape `model`), `lora` (adapters on
a pretrained `base`, see smolforge/basemodel.py) or `full` (every weight of `base`). The
loop, resume, metrics and curves are the same for all three.

Reads TOKENS (pretokenize's folder) and writes:
    OUT/            HF model directory (config.json, model.safetensors, tokenizer files,
                    chat template, smolforge.json with the task fields evaluate needs);
                    for `lora` the merged model, and the adapter alone in OUT/adapter/
    STATE/ckpt.pt   resumable state (a rerun after a crash continues from it)
    METRICS         final figures; TIMING: speed figures (kept apart: they vary by run)
    TRAIN_CURVE, VAL_CURVE   loss tables for `dvc plots`

Run by hand:
    python -m stages.train --model nets --tokens data/pretokenize/nets \
        --out models/nets/hf --state models/nets/state --metrics metrics/train/nets.json \
        --timing metrics/train/nets_timing.json \
        --train-curve metrics/train/nets_train_loss.csv --val-curve metrics/train/nets_val_loss.csv

On N GPUs (or N CPU processes): set `processes: N` and the stage runs itself under
torchrun, or run torchrun by hand (DDP, see smolforge/trainloop.py; `batch_size` stays
the global batch; rank 0 alone writes):
    torchrun --standalone --nproc_per_node=N -m stages.train --model nets ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smolforge import checkpoint, tokenizer
from smolforge.cli import StageError, produced_by, run
from smolforge.io import atomic_dir, atomic_file, read_meta, write_json
from smolforge.log import setup
from smolforge.model import LlamaShape
from smolforge.params import load_params


@dataclass(frozen=True)
class LoraParams:
    r: int  # adapter rank
    alpha: float  # scale alpha / r on the adapter's output
    dropout: float  # on the adapter's input, training only
    target_modules: list[str]  # HF Llama module names, e.g. q_proj, v_proj

    def check(self) -> list[str]:
        errors = [] if self.r >= 1 else [f"r: expected >= 1, got {self.r}"]
        if not 0 <= self.dropout < 1:
            errors.append(f"dropout: expected 0 <= dropout < 1, got {self.dropout}")
        if not self.target_modules:
            errors.append("target_modules: expected at least one module name")
        return errors


@dataclass(frozen=True)
class TrainParams:
    init: Literal["scratch", "lora", "full"]
    model: LlamaShape | None  # scratch: the architecture (ignored by lora / full)
    base: str | None  # lora / full: the pretrained model (ignored by scratch)
    lora: LoraParams | None  # lora: the adapters (ignored otherwise)
    seed: int
    batch_size: int  # examples per micro-batch
    length_buckets: int  # sort runs of this many batches by length (1: plain shuffle)
    grad_accum: int  # micro-batches per optimizer step
    lr: float  # peak learning rate
    min_lr: float  # cosine floor, reached at max_steps
    warmup_steps: int
    max_steps: int
    weight_decay: float
    betas: list[float]
    grad_clip: float  # max global grad norm; <= 0 turns clipping off
    eval_every: int  # steps
    eval_examples: int  # validation examples per evaluation (<= 0: all)
    checkpoint_every: int  # steps
    log_every: int  # steps
    threads: int  # torch CPU threads, per process (under torchrun: per rank)
    processes: int  # > 1: the stage runs itself under torchrun with this many (one per GPU)
    device: Literal["auto", "cpu", "cuda"]  # auto: CUDA when torch sees a GPU
    dtype: Literal["float32", "bfloat16"]  # bfloat16: autocast the forward (weights stay float32)
    compile: bool  # torch.compile the training forward

    def check(self) -> list[str]:
        errors = []
        for name in (
            "batch_size",
            "length_buckets",
            "grad_accum",
            "max_steps",
            "eval_every",
            "checkpoint_every",
            "log_every",
            "threads",
            "processes",
        ):
            if getattr(self, name) < 1:
                errors.append(f"{name}: expected >= 1")
        if self.processes > 1 and self.batch_size % self.processes:
            errors.append(
                f"batch_size: the global batch {self.batch_size} must divide over {self.processes} processes"
            )
        if not 0 <= self.min_lr <= self.lr:
            errors.append("min_lr: expected 0 <= min_lr <= lr")
        if len(self.betas) != 2:
            errors.append("betas: expected [beta1, beta2]")
        # the fields another init uses may stay set, so switching init is one param
        needs = {"scratch": ["model"], "lora": ["base", "lora"], "full": ["base"]}[self.init]
        errors += [
            f"{name}: init {self.init} needs it (it is null)" for name in needs if getattr(self, name) is None
        ]
        return errors


def lr_at(step: int, p: TrainParams) -> float:
    """Linear warmup to p.lr, then cosine decay to p.min_lr at p.max_steps."""
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    frac = (step - p.warmup_steps) / max(1, p.max_steps - p.warmup_steps)
    return p.min_lr + 0.5 * (p.lr - p.min_lr) * (1 + math.cos(math.pi * min(frac, 1.0)))


def write_curve(path: Path, header: str, rows: list[list]) -> None:
    with atomic_file(path) as f:
        f.write(header + "\n")
        for row in rows:
            f.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True, help="which params subsection: train.<model>")
    for name in ("tokens", "out", "state", "metrics", "timing", "train-curve", "val-curve"):
        ap.add_argument(f"--{name}", type=Path, required=True)
    args = ap.parse_args(argv)
    log = setup("train")
    p = load_params(f"train.{args.model}", TrainParams, args.params)

    # ---- load and check inputs before any work
    from smolforge.tokens import read_split

    meta = read_meta(args.tokens, "pretokenize", versions=(1,))
    train_split = read_split(args.tokens, "train", meta)
    val_split = read_split(args.tokens, "val", meta)
    if len(train_split) == 0:
        raise StageError(f"{args.tokens}/train.idx: no training examples {produced_by('pretokenize')}")
    longest = int(max(train_split.offsets[1:] - train_split.offsets[:-1]))
    if p.model is not None and longest > p.model.max_seq_len:
        raise StageError(
            f"params.yaml: train.{args.model}.model.max_seq_len {p.model.max_seq_len} is shorter "
            f"than the longest training example ({longest} tokens)"
        )

    if p.processes > 1 and "WORLD_SIZE" not in os.environ:
        # ---- relaunch this very command under torchrun; its ranks do the work
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launch += [f"--nproc_per_node={p.processes}", "-m", "stages.train"]
        log.info("running under torchrun: %d processes", p.processes)
        rc = subprocess.run([*launch, *(sys.argv[1:] if argv is None else argv)]).returncode
        if rc:
            raise StageError(f"torchrun with {p.processes} processes exited with status {rc} (see above)")
        return

    import numpy as np
    import torch

    from smolforge import finetune, trainloop
    from smolforge import model as model_lib
    from smolforge.data import Sampler

    torch.set_num_threads(p.threads)
    d = trainloop.setup(p.device, f"train.{args.model}.device")
    if d.world > 1 and p.batch_size % d.world:
        raise StageError(
            f"params.yaml: train.{args.model}.batch_size {p.batch_size} is the global batch: it must "
            f"divide evenly over the {d.world} processes of torchrun"
        )
    if not d.main:  # rank 0 alone reports
        logging.getLogger().setLevel(logging.WARNING)
    if p.init == "scratch":
        config = model_lib.llama_config(
            p.model, meta["vocab_size"], meta["bos_id"], meta["eos_id"], meta["pad_id"]
        )
        model = model_lib.build(config, p.seed)
    else:
        model = finetune.load_base(p.base, meta, args.tokens)
        if p.init == "lora":
            model = finetune.add_lora(model, p.lora, p.seed)
        limit = getattr(model.config, "max_position_embeddings", longest)
        if longest > limit:
            raise StageError(
                f"{args.tokens}: an example of {longest} tokens exceeds the base's context {limit}"
            )
        torch.manual_seed(p.seed + d.rank)  # adapter dropout draws from here, a stream per rank
    model.to(d.device)
    trainable = [q for q in model.parameters() if q.requires_grad]
    opt = trainloop.optimizer(model, p.lr, p.betas, p.weight_decay)
    fp = checkpoint.fingerprint(
        dataclasses.asdict(p),
        [args.tokens / "meta.json", args.tokens / "train.bin", args.tokens / "train.mask"],
    )

    # ---- resume from a checkpoint of this same run, if one exists
    step, tokens_seen, elapsed = 0, 0, 0.0
    window_loss, window_targets = 0.0, 0  # loss summed since the last log line
    history: dict[str, list] = {"train": [], "val": []}
    lengths = np.diff(train_split.offsets)
    sampler = Sampler(len(train_split), p.batch_size, p.seed, lengths=lengths, bucket=p.length_buckets)
    state = checkpoint.load(args.state, fp)
    if state is not None:
        finetune.load_trainable(model, state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step, tokens_seen, elapsed = state["step"], state["tokens_seen"], state["elapsed_s"]
        window_loss, window_targets = state["window_loss"], state["window_targets"]
        history = json.loads(state["history"])
        sampler = Sampler(
            len(train_split),
            p.batch_size,
            p.seed,
            lengths=lengths,
            bucket=p.length_buckets,
            **state["data_position"],
        )
        log.info("resumed from %s at step %d", args.state / checkpoint.CKPT, step)

    def save_state() -> None:
        if not d.main:
            return
        checkpoint.save(
            args.state,
            {
                "fingerprint": fp,
                "model": finetune.trainable_state(model),
                "optimizer": opt.state_dict(),
                "rng": torch.get_rng_state(),
                "step": step,
                "tokens_seen": tokens_seen,
                "elapsed_s": elapsed,
                "history": json.dumps(history),
                "data_position": sampler.position(),
                "window_loss": window_loss,
                "window_targets": window_targets,
            },
        )

    n_params = model_lib.n_params(model)
    n_trainable = sum(q.numel() for q in trainable)
    log.info(
        "model: %s parameters (%s trained, init %s); %s training examples",
        f"{n_params:,}",
        f"{n_trainable:,}",
        p.init,
        f"{len(train_split):,}",
    )

    def val_loss() -> float:
        return trainloop.val_loss(model, val_split, p.batch_size, meta["pad_id"], p.eval_examples, d)

    if p.init != "scratch" and not history["val"]:
        # a finetune's curve starts at the base model's validation loss
        history["val"].append([0, val_loss()])
        log.info("step 0/%d | val loss %.4f (the base model)", p.max_steps, history["val"][0][1])

    # ---- train
    log.info("device %s, %d process(es), %s, compile %s", d.device, d.world, p.dtype, p.compile)
    model.train()
    fwd = trainloop.wrap(model, d, p.compile)
    window_tokens, window_steps, t_window = 0, 0, time.perf_counter()
    while step < p.max_steps:
        t0 = time.perf_counter()
        lr = lr_at(step, p)
        s = trainloop.next_step(train_split, sampler, p.grad_accum, meta["pad_id"], d)
        for batch_loss in trainloop.step(fwd, model, opt, s, lr, p.grad_clip, p.dtype, d):
            window_loss += batch_loss
        step += 1
        tokens_seen += s.n_tokens
        window_targets += s.n_targets
        window_tokens += s.n_tokens
        window_steps += 1
        elapsed += time.perf_counter() - t0

        if step % p.log_every == 0 or step == p.max_steps:
            dt = time.perf_counter() - t_window
            train_loss = window_loss / max(window_targets, 1)
            history["train"].append([step, train_loss, lr])
            log.info(
                "step %d/%d | loss %.4f | lr %.1e | %.0f ms/step | %s tok/s",
                step,
                p.max_steps,
                train_loss,
                lr,
                1000 * dt / window_steps,
                f"{window_tokens / dt:,.0f}",
            )
            window_loss, window_targets = 0.0, 0
            window_tokens, window_steps, t_window = 0, 0, time.perf_counter()
        if step % p.eval_every == 0 or step == p.max_steps:
            history["val"].append([step, val_loss()])
            log.info("step %d/%d | val loss %.4f", step, p.max_steps, history["val"][-1][1])
        if step % p.checkpoint_every == 0 or step == p.max_steps:
            save_state()

    # ---- write the HF directory, metrics and curves (rank 0 alone)
    trainloop.finish(d)
    if not d.main:
        return
    with atomic_dir(args.out) as tmp:
        model.generation_config.pad_token_id = meta["pad_id"]
        finetune.save(model, p.init, tmp)
        tokenizer.load(args.tokens / "tokenizer").save_pretrained(tmp)
        write_json(
            tmp / "smolforge.json",
            {
                "task": meta.get("task", {}),
                "tokenizer_sha256": meta["tokenizer_sha256"],
                "train_params": dataclasses.asdict(p),
            },
        )
    final_train = history["train"][-1][1]
    final_val = history["val"][-1][1]
    write_json(
        args.metrics,
        {
            "train_loss": round(final_train, 6),
            "val_loss": round(final_val, 6),
            "steps": step,
            "tokens_seen": tokens_seen,
            "n_params": n_params,
            "n_trainable": n_trainable,
            **({"base_val_loss": round(history["val"][0][1], 6)} if p.init != "scratch" else {}),
        },
    )
    write_json(
        args.timing,
        {
            "wall_s": round(elapsed, 1),
            "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9)),
            "ms_per_step": round(1000 * elapsed / max(step, 1), 1),
            "threads": p.threads,
            "processes": d.world,
            "device": d.device.type,
            "dtype": p.dtype,
            "compile": p.compile,
        },
    )
    write_curve(args.train_curve, "step,train_loss,lr", history["train"])
    write_curve(args.val_curve, "step,val_loss", history["val"])
    log.info("done: %d steps, %s tokens, val loss %.4f", step, f"{tokens_seen:,}", final_val)


if __name__ == "__main__":
    raise SystemExit(run(main))
