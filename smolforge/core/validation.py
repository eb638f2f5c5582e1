"""Validation loss: mean cross-entropy over the target tokens of a token split.

Used by train (the curve) and evaluate (base vs finetune on the same held-out data), so
both report the very same quantity: loss over the tokens whose mask is 1 (what the model
is trained to write), never over prompts or padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from smolforge.core.data import eval_batches
from smolforge.core.tokens import TokenSplit


def loss_sum(model, batch) -> torch.Tensor:
    """Summed cross-entropy over the batch's targets (the caller divides by the count)."""
    logits = model(input_ids=batch.input_ids).logits  # (B, T, V)
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
            logits = model(input_ids=batch.input_ids).logits[:, :-1].float()
            labels = batch.labels[:, 1:]
            per_token = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # (B, T-1)
            counts = (labels != -100).sum(dim=1)
            out += [(float(s), int(c)) for s, c in zip(per_token.sum(dim=1), counts)]
    model.train(was_training)
    return out


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
