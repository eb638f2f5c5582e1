"""Coupled position ids: an answer that rewrites its prompt token for token shares its
prompt's positions (position coupling, as for long addition in Cho et al. 2024).

An example of such a task is `BOS p_0 .. p_{P-1} SEP a_0 .. a_{P-1} EOS`, where a_i is
written from p_{i-1}, p_i, p_{i+1} (the nets `pass` shape with blanks and borders). With
sequential positions the distance from a_i back to p_i grows with P, so a model trained
on short lines meets unseen distances on long ones. Coupled, the ids are

    BOS   0
    p_i   OFFSET + i (+ the jumps before i, training lines only)
    SEP   right after p_{P-1}: the slot a right neighbour of the last symbol would take
    a_i   id(p_i) + COUPLE
    EOS   id(a_{P-1}) + 1

The token that predicts a_{i+1} is a_i, whose inputs p_i .. p_{i+2} sit at relative
positions COUPLE, COUPLE - 1, COUPLE - 2 from it, for every i and every P. With COUPLE
= -1 they all lie *ahead* of the query's own id, where no earlier answer token can stand,
so no answer token is ever confused with the prompt symbol it must read. At the right
end, a_{P-1} finds SEP in p_P's slot: the line is over (EOS).

Jumps (`jumps[i] = j`: the ids from p_i on move j further) spread a packed training
line's separate nets over a wide range of ids, so training meets long relative distances
between unrelated tokens, as evaluation on long nets does.

torch-free: pretokenize (numpy) and evaluate both use it; llama.cpp's batch API takes the
same per-token ids.
"""

from __future__ import annotations

OFFSET = 1  # id of the prompt's first token (BOS is 0)
COUPLE = -1  # id(a_i) - id(p_i)


def prompt_ids(n_prompt: int, jumps: dict[int, int] | None = None) -> list[int]:
    """Ids of `BOS p_0 .. p_{P-1} SEP` for a prompt of `n_prompt` tokens (SEP excluded)."""
    out, shift = [0], 0
    for i in range(n_prompt):
        shift += (jumps or {}).get(i, 0)
        out.append(OFFSET + i + shift)
    out.append(out[-1] + 1 if n_prompt else OFFSET)
    return out


def answer_id(i: int) -> int:
    """Id of answer token a_i at evaluation (no jumps)."""
    return OFFSET + i + COUPLE


def example_ids(n_prompt: int, jumps: dict[int, int] | None = None) -> list[int]:
    """Ids of a whole training example `BOS p.. SEP a.. EOS` (2 * n_prompt + 3 tokens)."""
    head = prompt_ids(n_prompt, jumps)
    answer = [q + COUPLE for q in head[1:-1]]
    return head + answer + [(answer[-1] if answer else head[-1]) + 1]


def for_example(n_tokens: int, n_symbols: int, jumps: list | None, where: str) -> list[int]:
    """Ids of one rendered training example of `n_tokens` tokens whose prompt holds
    `n_symbols` symbols; refuses an example that is not `BOS p.. SEP a.. EOS` with one
    token per symbol (coupling pairs tokens, so a tokenizer merge would misalign it)."""
    from smolforge.core.cli import StageError

    n_prompt = (n_tokens - 3) // 2
    if n_tokens < 3 or (n_tokens - 3) % 2 or n_prompt != n_symbols:
        raise StageError(
            f"{where}: coupled positions need BOS, one token per prompt symbol, SEP, one per answer "
            f"symbol, EOS; this example's {n_symbols} prompt symbols took {n_tokens} tokens in all "
            "(a tokenizer that merges symbols cannot couple them: use tokenizer byte_bpe with vocab_size 272)"
        )
    return example_ids(n_prompt, {int(i): int(j) for i, j in (jumps or [])})
