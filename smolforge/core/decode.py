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
