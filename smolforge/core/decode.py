"""Batched greedy decoding with a KV cache (HF `generate`), for evaluation.

Prompts are token-id lists; they are left-padded into batches (left, so every row's next
token sits at the same position) and decoded greedily until EOS or a token budget.
"""

from __future__ import annotations

import torch


def greedy(
    model, prompts: list[list[int]], max_new_tokens: list[int], pad_id: int, eos_id: int, batch_size: int
) -> list[tuple[list[int], bool]]:
    """(new token ids, whether EOS ended them) for each prompt; EOS and pads removed.

    Rows are batched in order of prompt length, so similar rows share a batch; each batch
    decodes up to the largest budget among its rows and each row is then cut to its own.
    """
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), max_new_tokens[i]))
    out: list[tuple[list[int], bool]] = [([], False) for _ in prompts]
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        T = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, T - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, T - len(prompts[i]) :] = 1
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                use_cache=True,
                max_new_tokens=max(max_new_tokens[i] for i in rows),
                pad_token_id=pad_id,
                eos_token_id=eos_id,
            )
        for r, i in enumerate(rows):
            new = gen[r, T:].tolist()[: max_new_tokens[i]]
            ended = eos_id in new
            if ended:
                new = new[: new.index(eos_id)]
            out[i] = ([t for t in new if t != pad_id], ended)
    return out


def greedy_positioned(
    model,
    prompts: list[list[int]],
    prompt_positions: list[list[int]],
    answer_start: int,
    max_new_tokens: list[int],
    pad_id: int,
    eos_id: int,
    batch_size: int,
) -> list[tuple[list[int], bool]]:
    """`greedy` with explicit position ids (coupled layouts, smolforge/core/positions.py):
    each prompt token has its own id and the t-th new token gets `answer_start + t`.
    HF `generate` derives ids from the attention mask, so this loop drives the KV cache
    itself; rows are left-padded (pads masked out, id 0)."""
    from transformers import DynamicCache

    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), max_new_tokens[i]))
    out: list[tuple[list[int], bool]] = [([], False) for _ in prompts]
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        B, T = len(rows), max(len(prompts[i]) for i in rows)
        ids = torch.full((B, T), pad_id, dtype=torch.long)
        pos = torch.zeros((B, T), dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, T - len(prompts[i]) :] = torch.tensor(prompts[i])
            pos[r, T - len(prompts[i]) :] = torch.tensor(prompt_positions[i])
            mask[r, T - len(prompts[i]) :] = 1
        budget = max(max_new_tokens[i] for i in rows)
        new = torch.full((B, budget), pad_id, dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool)
        cache = DynamicCache()
        with torch.no_grad():
            logits = model(
                input_ids=ids.to(device),
                position_ids=pos.to(device),
                attention_mask=mask.to(device),
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]
            for t in range(budget):
                tok = torch.where(done, pad_id, logits.argmax(-1).cpu())  # (B,)
                new[:, t] = tok
                done |= tok == eos_id
                if bool(done.all()) or t == budget - 1:
                    break
                mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], 1)
                logits = model(
                    input_ids=tok[:, None].to(device),
                    position_ids=torch.full((B, 1), answer_start + t, device=device),
                    attention_mask=mask.to(device),
                    past_key_values=cache,
                    use_cache=True,
                ).logits[:, -1]
        for r, i in enumerate(rows):
            row = new[r].tolist()[: max_new_tokens[i]]
            ended = eos_id in row
            if ended:
                row = row[: row.index(eos_id)]
            out[i] = ([t for t in row if t != pad_id], ended)
    return out
