"""Validation loss: mean cross-entropy over the target tokens of a token split.

Used by train (the curve) and evaluate (base vs finetune on the same held-out data), so
both report the very same quantity: loss over the tokens whose mask is 1 (what the model
is trained to write), never over prompts or padding.

Bits per byte compare models whose tokenizers differ: the summed target loss in bits over
the UTF-8 bytes of the target text (`split.target_bytes`, counted by pretokenize from the
text itself, so it does not depend on the tokenizer).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from smolforge.core.data import eval_batches
from smolforge.core.tokens import TokenSplit


def loss_sum(model, batch) -> torch.Tensor:
    """Summed cross-entropy over the batch's targets (the caller divides by the count).

    A packed batch (`smolforge.core.data.pack`) runs the model with its per-example
    positions and mask and asks for logits only where the next token is a target, so the
    other positions' hidden states never reach the LM head (49,152 wide for SmolLM2)."""
    if batch.keep is not None:
        logits = model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            attention_mask=batch.attention_mask,
            logits_to_keep=batch.keep,
        ).logits  # (1, K, V)
        return F.cross_entropy(logits[0].float(), batch.labels[0, batch.keep + 1], reduction="sum")
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits  # (B, T, V)
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(), reduction="sum"
    )


def example_losses(model, split: TokenSplit, batch_size: int, pad_id: int) -> list[tuple[float, int]]:
    """(summed target loss, target count) of every example, in order."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for batch in eval_batches(split, batch_size, pad_id, 0):
            logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits[:, :-1].float()
            labels = batch.labels[:, 1:]
            per_token = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # (B, T-1)
            counts = (labels != -100).sum(dim=1)
            out += [(float(s), int(c)) for s, c in zip(per_token.sum(dim=1), counts)]
    model.train(was_training)
    return out


def bits_per_byte(loss_sum_nats: float, n_bytes: int) -> float:
    """Summed target loss (nats) in bits per UTF-8 byte of the target text."""
    return loss_sum_nats / math.log(2) / max(n_bytes, 1)


def target_count(split: TokenSplit, limit: int = 0) -> int:
    """Loss targets of the first `limit` examples (all when limit <= 0), counted as
    `loss_total` counts them (an example's first token is never predicted)."""
    n = len(split) if limit <= 0 else min(limit, len(split))
    starts = split.offsets[:n]
    return int(split.mask[: split.offsets[n]].sum()) - int(
        split.mask[starts[np.diff(split.offsets[: n + 1]) > 0]].sum()
    )


def bpb_of_mean(mean_loss: float, split: TokenSplit, limit: int = 0) -> float:
    """Bits per byte from a mean target loss over the first `limit` examples (e.g. train's
    validation loss over `eval_examples`)."""
    return bits_per_byte(mean_loss * target_count(split, limit), target_bytes(split, limit))


def target_bytes(split: TokenSplit, limit: int = 0) -> int:
    """UTF-8 bytes of the target text of the first `limit` examples (all when limit <= 0),
    the denominator of `bits_per_byte` for `loss_total` over the same examples."""
    if split.target_bytes is None:
        raise ValueError("this token split has no target byte counts (pretokenized before they were stored)")
    n = len(split) if limit <= 0 else min(limit, len(split))
    return int(split.target_bytes[:n].sum())


def loss_total(
    model, split: TokenSplit, batch_size: int, pad_id: int, limit: int = 0, rank: int = 0, world: int = 1
) -> tuple[float, int]:
    """(summed target loss, target count) over the first `limit` examples (all when
    limit <= 0); with `world` > 1 only over evaluation batches rank, rank + world, ...
    (the caller sums over ranks)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in eval_batches(split, batch_size, pad_id, limit, rank, world):
            total += loss_sum(model, batch.to(device)).item()
            count += batch.n_targets
    model.train(was_training)
    return total, count


def mean_loss(model, split: TokenSplit, batch_size: int, pad_id: int, limit: int = 0) -> float:
    """Mean target-token loss over the first `limit` examples (all when limit <= 0)."""
    total, count = loss_total(model, split, batch_size, pad_id, limit)
    return total / max(count, 1)
