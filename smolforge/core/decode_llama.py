"""Batched greedy decoding of a GGUF file in llama.cpp, with a position id for every token.

The same contract as `smolforge.core.decode.greedy_positioned` (token ids in, new token
ids out), so evaluate can score a model in transformers and its GGUF export in llama.cpp
on the same prompts. llama.cpp's batch API takes each token's position and sequence, so
many prompts decode side by side in one context (one KV-cache sequence each), and the
coupled positions of smolforge/core/positions.py need nothing llama.cpp lacks.

Prompts and generated tokens are llama.cpp token ids of the model's own vocabulary
(convert checks that llama.cpp tokenizes exactly as the HF tokenizer does).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np


class LlamaDecoder:
    """One llama.cpp context for `n_seq` sequences of at most `seq_tokens` tokens each."""

    def __init__(self, gguf: Path, n_seq: int, seq_tokens: int, threads: int):
        import llama_cpp

        self.lib = llama_cpp
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"{gguf}: llama.cpp could not load this GGUF file")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_seq * seq_tokens
        cparams.n_batch = cparams.n_ubatch = min(cparams.n_ctx, 4096)
        cparams.n_seq_max = n_seq
        cparams.kv_unified = True  # one cache shared by all sequences, sized n_ctx
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError(f"{gguf}: llama.cpp could not create a context of {cparams.n_ctx} tokens")
        self.n_seq, self.n_batch = n_seq, cparams.n_batch
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, n_seq)

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)

    def __enter__(self) -> LlamaDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> dict[int, np.ndarray]:
        """Decode (token, position, sequence, want logits) items in n_batch chunks; the
        logits of each sequence's last wanted token, by sequence."""
        out = {}
        for start in range(0, len(items), self.n_batch):
            chunk = items[start : start + self.n_batch]
            b = self.batch
            for k, (tok, pos, seq, want) in enumerate(chunk):
                b.token[k], b.pos[k], b.n_seq_id[k] = tok, pos, 1
                b.seq_id[k][0] = seq
                b.logits[k] = want
            b.n_tokens = len(chunk)
            rc = self.lib.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc}): the KV cache is too small for this batch")
            for k, (_, _, seq, want) in enumerate(chunk):
                if want:
                    ptr = self.lib.llama_get_logits_ith(self.ctx, k)
                    out[seq] = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (self.n_vocab,))
        return {s: v.copy() for s, v in out.items()}

    def greedy(
        self,
        prompts: list[list[int]],
        prompt_positions: list[list[int]],
        answer_starts: list[int],
        max_new_tokens: list[int],
        eos_id: int,
    ) -> list[tuple[list[int], bool]]:
        """(new token ids, whether EOS ended them) for each prompt, `n_seq` at a time; the
        t-th new token of row i gets position `answer_starts[i] + t`."""
        out: list[tuple[list[int], bool]] = []
        for start in range(0, len(prompts), self.n_seq):
            rows = range(start, min(start + self.n_seq, len(prompts)))
            self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
            items = [
                (tok, pos, s, k == len(prompts[i]) - 1)
                for s, i in enumerate(rows)
                for k, (tok, pos) in enumerate(zip(prompts[i], prompt_positions[i]))
            ]
            logits = self._decode(items)
            new: dict[int, list[int]] = {s: [] for s in range(len(rows))}
            ended = dict.fromkeys(new, False)
            for t in range(max(max_new_tokens[i] for i in rows)):
                live = [s for s, i in enumerate(rows) if not ended[s] and len(new[s]) < max_new_tokens[i]]
                if not live:
                    break
                step = []
                for s in live:
                    tok = int(np.argmax(logits[s]))
                    if tok == eos_id:
                        ended[s] = True
                        continue
                    new[s].append(tok)
                    step.append((tok, answer_starts[start + s] + t, s, True))
                if step:
                    logits.update(self._decode(step))
            out += [(new[s], ended[s]) for s in range(len(rows))]
        return out
