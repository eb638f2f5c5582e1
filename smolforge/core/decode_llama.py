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
        from llama_cpp import _logger  # what Llama(verbose=False) does: only errors reach stderr

        _logger.set_verbose(False)
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
        cparams.kv_unified = False  # a stream per sequence: attention never scans the others
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
        self, prompts: list[list[int]], max_new_tokens: list[int], eos_id: int
    ) -> list[tuple[list[int], bool]]:
        """(new token ids, whether EOS ended them) for each prompt, `n_seq` at a time:
        plain greedy decoding, positions 0, 1, 2, ... as in `smolforge.core.decode.greedy`."""
        out: list[tuple[list[int], bool]] = []
        for start in range(0, len(prompts), self.n_seq):
            rows = list(range(start, min(start + self.n_seq, len(prompts))))
            self._clear()
            logits = self._decode(
                [(t, k, s, k == len(prompts[i]) - 1) for s, i in enumerate(rows) for k, t in enumerate(prompts[i])]
            )
            new: dict[int, list[int]] = {s: [] for s in range(len(rows))}
            ended = dict.fromkeys(new, False)
            for _ in range(max(max_new_tokens[i] for i in rows)):
                step = []
                for s, i in enumerate(rows):
                    if ended[s] or len(new[s]) >= max_new_tokens[i]:
                        continue
                    tok = int(np.argmax(logits[s]))
                    if tok == eos_id:
                        ended[s] = True
                        continue
                    new[s].append(tok)
                    step.append((tok, len(prompts[i]) + len(new[s]) - 1, s, True))
                if not step:
                    break
                logits.update(self._decode(step))
            out += [(new[s], ended[s]) for s in range(len(rows))]
        return out

    def greedy_interleaved(
        self, inputs: list[list[int]], bos_id: int, end_id: int, eos_id: int
    ) -> list[tuple[list[int], bool]]:
        """`smolforge.core.decode.greedy_interleaved` in llama.cpp: each row's sequence is
        `BOS p_0 p_1 a_0 p_2 a_1 ... END a_n EOS`, the input tokens fed, each a_j the greedy
        choice after p_{j+1}; a finished row is simply no longer fed."""
        out: list[tuple[list[int], bool]] = []
        for start in range(0, len(inputs), self.n_seq):
            srcs = [p + [end_id] for p in inputs[start : start + self.n_seq]]
            self._clear()
            logits = self._decode(
                [(t, k, s, k == 2) for s, p in enumerate(srcs) for k, t in enumerate([bos_id, p[0], p[1]])]
            )
            answers: dict[int, list[int]] = {s: [] for s in range(len(srcs))}
            ended, live = dict.fromkeys(answers, False), dict.fromkeys(answers, True)
            while any(live.values()):
                step = []
                for s, p in enumerate(srcs):
                    if not live[s]:
                        continue
                    tok = int(np.argmax(logits[s]))
                    j = len(answers[s])  # tokens so far: BOS p_0 p_1 (a p)^j; next position 2j + 3
                    if j == len(p) - 1:  # the whole answer written: this is the token after a_n
                        ended[s], live[s] = tok == eos_id, False
                    elif tok in (eos_id, end_id):
                        ended[s], live[s] = True, False
                    else:
                        answers[s].append(tok)
                        if j + 2 < len(p):  # a_j, then p_{j+2}: logits after p_{j+2} give a_{j+1}
                            step += [(tok, 2 * j + 3, s, False), (p[j + 2], 2 * j + 4, s, True)]
                        else:  # a_n: its own logits say whether EOS follows
                            step.append((tok, 2 * j + 3, s, True))
                if step:
                    logits.update(self._decode(step))
            out += [(answers[s], ended[s]) for s in range(len(srcs))]
        return out

    def _clear(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
