"""Training a causal LM on pretokenized data: train's params, the learning-rate schedule,
and the loop around `trainloop.step` (resume, logging, evaluation, checkpoints, history).

The loop is the same whatever the model is (a fresh Llama, a LoRA or full finetune of a
pretrained base): the caller builds the model and its optimizer, this module steps them.
A run's whole progress (step, counts, log window, loss history, data position) goes into
the checkpoint together with the trainable tensors, optimizer and RNG, so a rerun after
a crash continues from the last checkpoint and ends bit for bit where an uninterrupted
run ends. Under torchrun every rank runs the loop; rank 0 alone logs and checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from smolforge.core import checkpoint, live, trainloop, validation
from smolforge.core.data import Sampler
from smolforge.core.model import LlamaShape
from smolforge.core.tokens import TokenSplit

log = logging.getLogger(__name__)


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
    """Stage train's params section for one model (`train.<model>`)."""

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
    # bfloat16: autocast the forward (weights stay float32); auto: bf16 where it measures
    # faster at start-up (smolforge/core/precision.py)
    dtype: Literal["float32", "bfloat16", "auto"]
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


@dataclass
class Job:
    """A training job: what the loop works on, built by the caller and stepped here."""

    p: TrainParams
    model: torch.nn.Module  # the plain module (not DDP-wrapped); its trainable tensors are checkpointed
    opt: torch.optim.Optimizer
    d: trainloop.Dist
    train: TokenSplit
    val: TokenSplit
    pad_id: int
    state_dir: Path  # where ckpt.pt lives
    fingerprint: str  # checkpoint.fingerprint of params and token files: which states are ours
    live: Any = None  # rank 0: the dvclive Live that shows the run as it trains (smolforge.core.live)


@dataclass
class Progress:
    """Where a run stands; all of it is saved in the checkpoint and restored on resume."""

    sampler: Sampler  # the data position
    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # time spent in steps (evaluation and checkpoints not counted)
    window_loss: float = 0.0  # loss summed since the last log line
    window_targets: int = 0
    history: dict[str, list] = field(default_factory=lambda: {"train": [], "val": []})
    # history rows: "train" [step, train_loss, lr], "val" [step, val_loss]


def start(job: Job) -> Progress:
    """A fresh Progress, or the one this same run saved in `job.state_dir` (restoring the
    trainable tensors, the optimizer and the RNG with it)."""
    p = job.p
    lengths = np.diff(job.train.offsets)

    def sampler(**position) -> Sampler:
        return Sampler(
            len(job.train), p.batch_size, p.seed, lengths=lengths, bucket=p.length_buckets, **position
        )

    state = checkpoint.load(job.state_dir, job.fingerprint)
    if state is None:
        return Progress(sampler())
    checkpoint.load_trainable(job.model, state["model"])
    job.opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    prog = Progress(
        sampler(**state["data_position"]),
        step=state["step"],
        tokens_seen=state["tokens_seen"],
        elapsed_s=state["elapsed_s"],
        window_loss=state["window_loss"],
        window_targets=state["window_targets"],
        history=json.loads(state["history"]),
    )
    log.info("resumed from %s at step %d", job.state_dir / checkpoint.CKPT, prog.step)
    return prog


def save_state(job: Job, prog: Progress) -> None:
    """Checkpoint the run; rank 0 alone writes (DDP keeps the weights alike on every rank)."""
    if not job.d.main:
        return
    state = {
        "fingerprint": job.fingerprint,
        "model": checkpoint.trainable_state(job.model),
        "optimizer": job.opt.state_dict(),
        "rng": torch.get_rng_state(),
        "step": prog.step,
        "tokens_seen": prog.tokens_seen,
        "elapsed_s": prog.elapsed_s,
        "history": json.dumps(prog.history),
        "data_position": prog.sampler.position(),
        "window_loss": prog.window_loss,
        "window_targets": prog.window_targets,
    }
    checkpoint.save(job.state_dir, state)


def val_loss(job: Job) -> float:
    """Mean target loss over the first `eval_examples` validation examples."""
    p = job.p
    return trainloop.val_loss(job.model, job.val, p.batch_size, job.pad_id, p.eval_examples, job.d)


def fit(job: Job, prog: Progress) -> Progress:
    """Step `job` from `prog.step` to `max_steps`: log every `log_every` steps, evaluate every
    `eval_every`, checkpoint every `checkpoint_every`, and all three at the last step."""
    p, d, model = job.p, job.d, job.model
    if p.init != "scratch" and not prog.history["val"]:
        # a finetune's curve starts at the base model's validation loss
        prog.history["val"].append([0, val_loss(job)])
        log_live(job, 0, {"val_loss": prog.history["val"][0][1]})
        log.info("step 0/%d | val loss %.4f (the base model)", p.max_steps, prog.history["val"][0][1])

    log.info("device %s, %d process(es), %s, compile %s", d.device, d.world, p.dtype, p.compile)
    model.train()
    fwd = trainloop.wrap(model, d, p.compile)
    window_tokens, window_steps, t_window = 0, 0, time.perf_counter()
    while prog.step < p.max_steps:
        t0 = time.perf_counter()
        lr = lr_at(prog.step, p)
        s = trainloop.next_step(job.train, prog.sampler, p.grad_accum, job.pad_id, d)
        for batch_loss in trainloop.step(fwd, model, job.opt, s, lr, p.grad_clip, p.dtype, d):
            prog.window_loss += batch_loss
        prog.step += 1
        prog.tokens_seen += s.n_tokens
        prog.window_targets += s.n_targets
        window_tokens += s.n_tokens
        window_steps += 1
        prog.elapsed_s += time.perf_counter() - t0

        last = prog.step == p.max_steps
        if prog.step % p.log_every == 0 or last:
            dt = time.perf_counter() - t_window
            log_window(job, prog, lr, 1000 * dt / window_steps, window_tokens / dt)
            window_tokens, window_steps, t_window = 0, 0, time.perf_counter()
        if prog.step % p.eval_every == 0 or last:
            prog.history["val"].append([prog.step, val_loss(job)])
            log_live(job, prog.step, {"val_loss": prog.history["val"][-1][1]})
            log.info("step %d/%d | val loss %.4f", prog.step, p.max_steps, prog.history["val"][-1][1])
        if prog.step % p.checkpoint_every == 0 or last:
            save_state(job, prog)
    trainloop.finish(d)
    return prog


def log_live(job: Job, step: int, values: dict[str, float]) -> None:
    """Show `values` at `step` in the live folder (rank 0, when the caller opened one)."""
    if job.live is not None:
        live.log_step(job.live, step, values)


def log_window(job: Job, prog: Progress, lr: float, ms_per_step: float, tok_per_s: float) -> None:
    """Close the log window: its mean loss goes to the history, the live folder and the log,
    then it restarts. tokens_per_s is shown live only: it varies by machine, so the finished
    folder (`write_live`) leaves it out and the timing file holds the run's mean."""
    train_loss = prog.window_loss / max(prog.window_targets, 1)
    prog.history["train"].append([prog.step, train_loss, lr])
    log_live(job, prog.step, {"train_loss": train_loss, "lr": lr, "tokens_per_s": round(tok_per_s)})
    log.info(
        "step %d/%d | loss %.4f | lr %.1e | %.0f ms/step | %s tok/s",
        prog.step,
        job.p.max_steps,
        train_loss,
        lr,
        ms_per_step,
        f"{tok_per_s:,.0f}",
    )
    prog.window_loss, prog.window_targets = 0.0, 0


# Losses in the headline figures carry 4 decimals: the last digits of a float32 loss differ
# between machines (summation order), and 1e-4 is below any change worth reading.
LOSS_DECIMALS = 4


def metrics(prog: Progress, job: Job, n_params: int, n_trainable: int) -> dict:
    """The headline figures of metrics.json (dvclive adds `step`): the same for the same
    params and data on any machine. Bits per byte (the validation loss over the target
    text's UTF-8 bytes) compare models whatever their tokenizers."""
    p = job.p
    val_loss, base_loss = prog.history["val"][-1][1], prog.history["val"][0][1]
    out = {
        "train_loss": round(prog.history["train"][-1][1], LOSS_DECIMALS),
        "val_loss": round(val_loss, LOSS_DECIMALS),
        "val_bpb": round(validation.bpb_of_mean(val_loss, job.val, p.eval_examples), LOSS_DECIMALS),
        "tokens_seen": prog.tokens_seen,
        "n_params": n_params,
        "n_trainable": n_trainable,
    }
    if p.init != "scratch":  # a finetune's curve starts at its base model
        out["base_val_loss"] = round(base_loss, LOSS_DECIMALS)
        out["base_val_bpb"] = round(
            validation.bpb_of_mean(base_loss, job.val, p.eval_examples), LOSS_DECIMALS
        )
    return out


def series(history: dict[str, list]) -> dict[str, list[tuple[int, float]]]:
    """The step series of the live folder from a run's history: train_loss and lr at each
    log window, val_loss at each evaluation; floats to 6 significant digits."""

    def g6(v: float) -> float:
        return float(f"{v:.6g}")

    return {
        "train_loss": [(row[0], g6(row[1])) for row in history["train"]],
        "lr": [(row[0], g6(row[2])) for row in history["train"]],
        "val_loss": [(row[0], g6(row[1])) for row in history["val"]],
    }


def write_live(folder: Path, prog: Progress, summary: dict | None = None) -> None:
    """The live folder as `prog`'s history has it, written as a whole: at the start of a run
    (empty, or, on resume, exactly the steps of the checkpoint, so the series goes on with no
    step twice and none missing) and at the end with the headline figures."""
    if summary is None:  # the latest value of each series, as dvclive's own summary has it
        summary = {name: rows[-1][1] for name, rows in series(prog.history).items() if rows}
    live.write(folder, series(prog.history), summary)


def timing(prog: Progress, p: TrainParams, d: trainloop.Dist) -> dict:
    """The speed figures: kept apart from `metrics`, as they vary from run to run."""
    return {
        "wall_s": round(prog.elapsed_s, 1),
        "tokens_per_s": round(prog.tokens_seen / max(prog.elapsed_s, 1e-9)),
        "ms_per_step": round(1000 * prog.elapsed_s / max(prog.step, 1), 1),
        "threads": p.threads,
        "processes": d.world,
        "device": d.device.type,
        "dtype": p.dtype,
        "compile": p.compile,
    }
