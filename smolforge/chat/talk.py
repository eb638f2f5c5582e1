"""Talking to a trained chat model, HF directory or GGUF file, with one prompt rule.

The prompt is built by smolforge.core.styles.render_text from the chat template the model
carries (HF: tokenizer_config / chat_template.jinja; GGUF: `tokenizer.chat_template`),
which is the template format rendered the training text with; a task tag (task_tags
style) can replace the template's default. Generation ends at the model's end-of-turn
token (EOS; a GGUF's end-of-generation tokens) and at the stop words of training
(smolforge.json beside HF weights; `smolforge.stop` inside a GGUF), plus any the user
adds. Decoding is greedy unless a temperature is given. A GGUF opens at the context
length it was trained with unless another is asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from smolforge.core import styles
from smolforge.core.card import read_card
from smolforge.core.cli import StageError, produced_by


@dataclass
class Conversation:
    """A running chat: the persona (system turn) and the turns so far."""

    system: str = ""
    turns: list[dict] = field(default_factory=list)

    def messages(self, user: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.turns, {"role": "user", "content": user}]

    def add(self, user: str, reply: str) -> None:
        self.turns += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def tag_extra(template: str, bos: str, eos: str, tag: str | None) -> dict:
    """The template variables that choose task tag `tag` ({} for None); a StageError when the
    tag is malformed or the template has no task tags to choose."""
    if tag is None:
        return {}
    problem = styles.check_tag(tag)
    if problem:
        raise StageError(f"--tag: {problem}")
    chat = [{"role": "user", "content": "q"}]
    if styles.render_text(template, chat, bos, eos, True, tag="A") == styles.render_text(
        template, chat, bos, eos, True, tag="B"
    ):
        raise StageError("--tag: this model's chat template has no task tags (only chat style task_tags has)")
    return {"tag": tag}


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The text before the first stop word (nanoChatGPT's stop, applied to the reply only)."""
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut].strip()


class HFChat:
    """A model directory written by train (transformers)."""

    def __init__(self, folder: Path, threads: int = 1):
        import torch

        from smolforge.core import tokenizer
        from smolforge.core.hf import load_trained

        torch.set_num_threads(threads)
        self.model = load_trained(folder)
        self.tok = tokenizer.load(folder)
        task = read_card(folder).task
        self.template = self.tok.chat_template
        self.bos, self.eos = self.tok.bos_token or "", self.tok.eos_token or ""
        self.stops = list(task.stop)
        self.default_system = task.system
        self.extra: dict = {}

    def choose_tag(self, tag: str | None) -> None:
        """Prompt with task tag `tag` instead of the template's default (None: the default)."""
        self.extra = tag_extra(self.template, self.bos, self.eos, tag)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        text = styles.render_text(self.template, messages, self.bos, self.eos, True, **self.extra)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def reply(self, messages: list[dict], max_new_tokens: int, temperature: float, stops: list[str]) -> str:
        import torch

        ids = torch.tensor([self.prompt_ids(messages)])
        sample = temperature > 0
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                **({"temperature": temperature} if sample else {}),
                pad_token_id=self.tok.pad_token_id,
                eos_token_id=self.tok.eos_token_id,
            )
        text = self.tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        return cut_at_stop(text, self.stops + stops)


class GGUFChat:
    """A GGUF file written by convert (llama.cpp)."""

    def __init__(self, path: Path, threads: int = 1, n_ctx: int | None = None):
        """n_ctx: context window in tokens; None: the model's own (`<arch>.context_length`)."""
        from llama_cpp import Llama

        try:
            # n_ctx 0 makes llama.cpp use the context length the file says it was trained with
            self.llm = Llama(model_path=str(path), n_ctx=n_ctx or 0, n_threads=threads, verbose=False)
        except ValueError as e:  # llama.cpp's "Failed to load model from file": damaged or truncated
            raise StageError(f"{path}: llama.cpp cannot load it ({e}) {produced_by('convert')}") from None
        meta = self.llm.metadata
        trained = int(meta.get(f"{meta.get('general.architecture', 'llama')}.context_length", 0))
        if n_ctx is not None and trained and n_ctx > trained:
            raise StageError(f"--n-ctx: {n_ctx} exceeds the model's context length {trained} ({path})")
        self.template = meta.get("tokenizer.chat_template")
        if not self.template:
            raise StageError(f"{path}: no tokenizer.chat_template inside (not written by stage convert?)")
        vocab = self.llm

        def token_text(key: str) -> str:
            i = meta.get(key)
            return vocab.detokenize([int(i)], special=True).decode("utf-8", "replace") if i else ""

        self.bos, self.eos = (
            token_text("tokenizer.ggml.bos_token_id"),
            token_text("tokenizer.ggml.eos_token_id"),
        )
        self.stops = json.loads(meta.get("smolforge.stop", "[]"))
        self.default_system = meta.get("smolforge.system", "")
        self.extra: dict = {}

    def choose_tag(self, tag: str | None) -> None:
        """Prompt with task tag `tag` instead of the template's default (None: the default)."""
        self.extra = tag_extra(self.template, self.bos, self.eos, tag)

    def reply(self, messages: list[dict], max_new_tokens: int, temperature: float, stops: list[str]) -> str:
        text = styles.render_text(self.template, messages, self.bos, self.eos, True, **self.extra)
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        self.llm.reset()
        out = self.llm.create_completion(
            ids,
            max_tokens=max_new_tokens,
            temperature=temperature,
            top_k=1 if temperature <= 0 else 40,
            stop=[s for s in self.stops + stops if s] or None,
        )
        return cut_at_stop(out["choices"][0]["text"], self.stops + stops)


def load(path: Path | str, threads: int = 1, n_ctx: int | None = None):
    """HFChat for a directory, GGUFChat for a .gguf file (opened with `n_ctx` tokens of
    context, None: the model's own)."""
    path = Path(path)
    if n_ctx is not None and n_ctx < 1:
        raise StageError(f"--n-ctx: expected >= 1, got {n_ctx}")
    if path.is_dir() and (path / "config.json").is_file():
        if n_ctx is not None:
            raise StageError("--n-ctx: only a .gguf model takes a context length (an HF model uses its own)")
        return HFChat(path, threads)
    if path.is_file() and path.suffix == ".gguf":
        return GGUFChat(path, threads, n_ctx)
    raise StageError(f"{path}: expected a model directory (train's output) or a .gguf file (convert's)")
