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

from smolforge.core.data import IGNORE, eval_batches
from smolforge.core.tokens import TokenSplit


def body_and_head(model):
    """(decoder body returning `.last_hidden_state` after the final norm, LM head) of an
    HF-style causal LM, also through peft's wrapper (whose LoRA layers live in the body)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.lm_head


class TargetLoss(torch.nn.Module):
    """Summed cross-entropy over a batch's targets, with logits only at target positions.

    The hidden states of prompts, padding and the last token never reach the LM head: for
    SmolLM2 that head is 49,152 x 576, and at every position it costs as much as about a
    third of the body. Training wraps this module (not the model) in DDP and
    torch.compile, so gradient sync and compilation see the whole loss.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, labels, position_ids=None, attention_mask=None) -> torch.Tensor:
        body, head = body_and_head(self.model)
        h = body(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask).last_hidden_state
        targets = labels[:, 1:]  # position t predicts token t + 1
        chosen = targets != IGNORE  # (B, T-1)
        logits = head(h[:, :-1][chosen])  # (K, V), K = the batch's target count
        return F.cross_entropy(logits.float(), targets[chosen], reduction="sum")


def loss_sum(model, batch) -> torch.Tensor:
    """Summed cross-entropy over the batch's targets (the caller divides by the count):
    padded (`collate`) or packed (`pack`: per-example positions and mask), logits only at
    target positions either way (`TargetLoss`)."""
    return TargetLoss(model)(batch.input_ids, batch.labels, batch.position_ids, batch.attention_mask)


def example_losses(model, split: TokenSplit, batch_size: int, pad_id: int) -> list[tuple[float, int]]:
    """(summed target loss, target count) of every example, in order."""
    was_training = model.training
    model.eval()
    out = []
    body, head = body_and_head(model)
    with torch.no_grad():
        for batch in eval_batches(split, batch_size, pad_id, 0):
            h = body(input_ids=batch.input_ids, position_ids=batch.position_ids).last_hidden_state
            targets = batch.labels[:, 1:]
            chosen = targets != IGNORE  # (B, T-1)
            per_token = F.cross_entropy(head(h[:, :-1][chosen]).float(), targets[chosen], reduction="none")
            rows = chosen.nonzero()[:, 0]  # (K,) the example of each target
            sums = torch.zeros(len(targets), dtype=per_token.dtype, device=per_token.device).index_add_(0, rows, per_token)
            out += [(float(s), int(c)) for s, c in zip(sums, chosen.sum(dim=1))]
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
