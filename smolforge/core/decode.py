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


class _KVBuffers:
    """A preallocated KV cache for an HF Llama's attention layers: `update` (the one
    method they call) writes the new keys and values in place and returns views of
    everything so far, instead of concatenating a growing cache at every step (which
    took half of a decoding step's time here)."""

    def __init__(self, config, batch: int, max_len: int, dtype, device):
        heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (batch, heads, max_len, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.length = 0  # tokens cached; the step in flight writes after them

    def update(self, key, value, layer_idx, *args, **kwargs):
        end = self.length + key.shape[2]
        self.k[layer_idx][:, :, self.length : end] = key
        self.v[layer_idx][:, :, self.length : end] = value
        return self.k[layer_idx][:, :, :end], self.v[layer_idx][:, :, :end]


def llama_stepper(model, batch: int, max_len: int):
    """step(ids (B, T)) -> logits (B, T, V): the next T tokens of B aligned rows (no
    padding), through the HF Llama's own layers with `_KVBuffers`; positions count on
    from the cached length. None when `model` is not a plain LlamaForCausalLM."""
    if type(model).__name__ != "LlamaForCausalLM":
        return None
    body = model.model
    param = next(model.parameters())
    cache = _KVBuffers(model.config, batch, max_len, param.dtype, param.device)

    def step(ids: torch.Tensor) -> torch.Tensor:
        T, start = ids.shape[1], cache.length
        h = body.embed_tokens(ids)
        rope = body.rotary_emb(h, torch.arange(start, start + T, device=ids.device)[None])
        # (1, 1, T, start + T): every cached token, and the new ones causally
        mask = torch.ones(T, start + T, dtype=torch.bool, device=ids.device).tril(diagonal=start)[None, None]
        for layer in body.layers:
            h = layer(h, attention_mask=mask, position_embeddings=rope, past_key_values=cache)
            h = h[0] if isinstance(h, tuple) else h
        cache.length = start + T
        return model.lm_head(body.norm(h))

    return step


def greedy_interleaved(
    model, inputs: list[list[int]], bos_id: int, end_id: int, eos_id: int, batch_size: int
) -> list[tuple[list[int], bool]]:
    """Interleaved decoding (smolforge.nets.layouts, `interleave`): for input tokens
    p_0 .. p_n the sequence is `BOS p_0 p_1 a_0 p_2 a_1 ... END a_n EOS`, where the input
    tokens are fed and each answer token a_j is the model's greedy choice after p_{j+1}.

    Returns each row's answer tokens a_0 .. a_n and whether the model then wrote EOS. A row
    that writes EOS (or END) where an answer token belongs stops there, ended. Rows of a
    batch share one schedule, two tokens a step (the last answer token and the next input
    token), so they need no padding: a finished row is fed END until its batch is done.
    """
    from transformers import DynamicCache

    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    out: list[tuple[list[int], bool]] = [([], False) for _ in inputs]
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        srcs = [inputs[i] + [end_id] for i in rows]  # p_0 .. p_n, END
        B, longest = len(rows), max(len(p) for p in srcs)

        def fed(j: int) -> torch.Tensor:
            return torch.tensor([p[j] if j < len(p) else end_id for p in srcs])

        answers: list[list[int]] = [[] for _ in rows]
        ended, live = [False] * B, [True] * B
        step = llama_stepper(model, B, 2 * longest + 2)
        if step is None:  # another architecture: transformers' own cache
            cache = DynamicCache()
            step = lambda x: model(input_ids=x, past_key_values=cache, use_cache=True).logits  # noqa: E731
        x = torch.stack([torch.full((B,), bos_id), fed(0), fed(1)], 1)
        with torch.no_grad():
            for j in range(longest):  # j: the answer token about to be read
                logits = step(x.to(device))
                if j > 0:  # after a_{j-1}: EOS once the whole answer is written
                    after = logits[:, 0].argmax(-1).tolist()
                    for r in range(B):
                        if live[r] and len(answers[r]) == len(srcs[r]) - 1:
                            ended[r], live[r] = after[r] == eos_id, False
                if not any(live):
                    break
                nxt = logits[:, -1].argmax(-1).cpu()  # a_j, read after p_{j+1}
                for r, t in enumerate(nxt.tolist()):
                    if live[r] and len(answers[r]) < len(srcs[r]) - 1:
                        if t in (eos_id, end_id):
                            ended[r], live[r] = True, False
                        else:
                            answers[r].append(t)
                x = torch.stack([nxt, fed(j + 2)], 1)
        for r, i in enumerate(rows):
            out[i] = (answers[r], ended[r])
    return out
