"""The training step, shared by the training loop (smolforge/core/train.py) and bench/:
one optimizer step over a global batch, in one process or in several under torchrun (DDP).

Under torchrun every rank draws the same global batch from the same seeded sampler and
keeps a disjoint share of it (rank r: examples r, r+W, r+2W, ... of each micro-batch, so
shares of a length-sorted batch are alike in length); `batch_size` stays the global
batch. Each rank divides its summed loss by the global batch's target count, so the
gradients summed over ranks equal the single-process gradient, and the losses summed
over ranks equal the single-process loss, both up to float rounding.

In one process (no torchrun) nothing here communicates, and the step does exactly what
the inline loop of stage train did before it moved here: same ops, same order, same bits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from smolforge.core import validation
from smolforge.core.cli import StageError
from smolforge.core.data import IGNORE, Batch, Sampler, collate, count, pack
from smolforge.core.tokens import TokenSplit


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank of world (1 without torchrun) and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0 alone logs and writes outputs, checkpoints and metrics."""
        return self.rank == 0


def setup(device: str, where: str) -> Dist:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and start the process
    group when there are several processes: NCCL on CUDA, gloo on CPU.

    `device` is the params value: auto (CUDA when torch sees a GPU), cpu or cuda; `where`
    names the params field for the error message.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise StageError(f"params.yaml: {where}: cuda, but torch sees no GPU (use auto or cpu)")
    if cuda:  # one GPU per process: torchrun's LOCAL_RANK picks it
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, dev)


def finish(d: Dist) -> None:
    """Leave the process group (a no-op in one process)."""
    if d.world > 1 and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def optimizer(model, lr: float, betas: list[float], weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; matrices decay, vectors (norms) do not."""
    trainable = [q for q in model.parameters() if q.requires_grad]
    decay = [q for q in trainable if q.dim() >= 2]
    no_decay = [q for q in trainable if q.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=tuple(betas),
        fused=False,
    )


def wrap(model, d: Dist, compile_: bool):
    """The module training runs its loss through: `validation.TargetLoss` over `model`,
    under DDP with torchrun (gradients all-reduced in buckets during backward), then
    torch.compile if asked. `model` itself stays the plain module that checkpoints and
    outputs are taken from."""
    fwd = validation.TargetLoss(model)
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [d.device.index] if d.device.type == "cuda" else None
        # buffers (RoPE inv_freq) are the same on every rank: no need to broadcast them
        fwd = DistributedDataParallel(fwd, device_ids=ids, broadcast_buffers=False)
    if compile_:
        # example lengths vary from batch to batch: one dynamic-shape graph, not one per T
        fwd = torch.compile(fwd, dynamic=True)
    return fwd


@dataclass
class Step:
    """One optimizer step's data: this rank's micro-batches, the global batch's counts."""

    batches: list[Batch]  # grad_accum micro-batches, each (B / world, T) on this rank
    n_tokens: int  # real tokens of the global batch, all ranks together
    n_targets: int  # loss targets of the global batch, all ranks together


def next_step(
    split: TokenSplit, sampler: Sampler, grad_accum: int, pad_id: int, d: Dist, packed: bool = False
) -> Step:
    """Draw `grad_accum` global batches and keep this rank's share of each, padded
    (`collate`) or, with `packed`, packed (`pack`: no padding, logits only at target
    positions; the same loss up to float rounding). Train uses padded batches: on the
    AVX2-only EPYC, packing measured 0.96x-1.55x for the chat step (docs/performance.md),
    not a reliable gain."""
    batches, n_tokens, n_targets = [], 0, 0
    for _ in range(grad_accum):
        indices = sampler.next_indices()
        tokens, targets = count(split, indices)
        n_tokens, n_targets = n_tokens + tokens, n_targets + targets
        share = indices[d.rank :: d.world]
        if share:
            batches.append(pack(split, share) if packed else collate(split, share, pad_id))
        else:
            # the last batch of a pass can be smaller than the world: this rank still runs a
            # forward and backward (every rank must join the all-reduce), with no targets
            b = collate(split, indices[:1], pad_id)
            no_labels = torch.full_like(b.labels, IGNORE)
            batches.append(dataclasses.replace(b, labels=no_labels, n_tokens=0, n_targets=0))
    return Step(batches, n_tokens, n_targets)


def autocast(d: Dist, dtype: str):
    """bf16 autocast for `dtype: bfloat16`; float32 runs with no autocast at all."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(d.device.type, dtype=getattr(torch, dtype))


def step(fwd, model, opt, s: Step, lr: float, grad_clip: float, dtype: str, d: Dist) -> list[float]:
    """One optimizer step over `s`; returns each micro-batch's summed target loss over all
    ranks (the caller sums them into its log window, in this order)."""
    for group in opt.param_groups:
        group["lr"] = lr
    losses = []
    for i, batch in enumerate(s.batches):
        # DDP all-reduces on the last micro-batch's backward only
        sync = d.world == 1 or i == len(s.batches) - 1
        with contextlib.nullcontext() if sync else fwd.no_sync():
            with autocast(d, dtype):
                b = batch.to(d.device)
                loss = fwd(b.input_ids, b.labels, b.position_ids, b.attention_mask) / s.n_targets  # step mean
            # DDP averages gradients over ranks; each rank's loss is already a share of the sum
            (loss * d.world if d.world > 1 else loss).backward()
        losses.append(loss.detach())
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    per_batch = torch.stack(losses).double()  # (grad_accum,); one device sync for the step
    if d.world > 1:
        torch_dist.all_reduce(per_batch)
    return [v * s.n_targets for v in per_batch.tolist()]


def val_loss(model, split: TokenSplit, batch_size: int, pad_id: int, limit: int, d: Dist) -> float:
    """Mean target loss over the first `limit` validation examples; under torchrun each
    rank takes every world-th evaluation batch and the sums are all-reduced."""
    total, count_ = validation.loss_total(model, split, batch_size, pad_id, limit, d.rank, d.world)
    if d.world > 1:
        both = torch.tensor([total, float(count_)], dtype=torch.float64, device=d.device)
        torch_dist.all_reduce(both)
        total, count_ = both.tolist()
    return total / max(count_, 1)
