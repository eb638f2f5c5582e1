"""The documented recipes, and params.yaml as `dvc exp run -S ...` leaves it.

A recipe is the one set of `dvc exp run -S key=value` overrides that turns the finished
default pipeline into one of the hobby recipes smolforge unifies (docs/chat.md, Recipes).
Everything else a recipe needs is derived or ignored rather than asked for: a scratch
model's context from the data (`train.<m>.model.max_seq_len: auto`), Ollama's window
from the model (`convert.<m>.modelfile.num_ctx: auto`), and the fields the chosen
tokenizer backend or init does not use stay set and unread.

`with_overrides` applies a set with DVC's own code (Hydra's override grammar, as
`dvc exp run -S` does, sweeps included) to a copy of the file, so a check sees exactly
the params.yaml an experiment would run with.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolforge.core.cli import StageError


@dataclass(frozen=True)
class Recipe:
    name: str
    origin: str  # the hobby recipe it reproduces
    what: str  # one line: what the chat model becomes
    overrides: tuple[str, ...]  # `dvc exp run -S` values, in the order docs/chat.md shows them
    # the set changes synthesize's params: the LLM is asked again (resumable, cached), so
    # the run takes as long as that synthesis (tests/e2e/test_recipes.py runs the others)
    synthesizes: bool = False


RECIPES = {
    r.name: r
    for r in (
        Recipe(
            "default",
            "Paul Graham finetune",
            "LoRA on SmolLM2-135M-Instruct in its own chat template: the essays as completion, "
            "conversations and persona QA as chat (what `dvc repro` builds)",
            (),
        ),
        Recipe(
            "nanochatgpt",
            "nanoChatGPT",
            "the same finetune in nanoChatGPT's <human> ... <endOfText> / <bot> ... format",
            ("format.chat.chat_style=human_bot",),
        ),
        Recipe(
            "nanophi",
            "NanoPhi",
            "the same finetune in NanoPhi's task tags (User: [Chat] ... / Bot: [Chat] ...<eot>)",
            ("format.chat.chat_style=task_tags",),
        ),
        Recipe(
            "chat-builder",
            "chat-builder + llama2.c",
            "a fresh small Llama (train.chat.model) with its own sentencepiece vocabulary, "
            "trained on chat-builder's ~ / = / # lines",
            (
                "format.chat.chat_style=chat_builder",
                "pretokenize.chat.tokenizer=sentencepiece",
                "train.chat.init=scratch",
            ),
        ),
        Recipe(
            "chat-builder-at-scale",
            "chat-builder + llama2.c, at its own scale",
            "the chat-builder model trained on the dialogues of ~9,000 LLM requests, three per noun "
            "of words/common_nouns.txt (about an hour of synthesis on 2 cores; docs/chat.md)",
            (
                "format.chat.chat_style=chat_builder",
                "pretokenize.chat.tokenizer=sentencepiece",
                "train.chat.init=scratch",
                "synthesize.tasks=[conversations]",
                "synthesize.conversations.words=words/common_nouns.txt",
                "synthesize.conversations.samples_per_word=3",
                "format.chat.sources.essays=0",
                "format.chat.sources.qa=0",
                "format.chat.val_share=0.1",
                "train.chat.model.dim=384",
                "train.chat.model.n_heads=6",
                "train.chat.model.n_kv_heads=6",
                "train.chat.model.ffn_dim=1024",
                "train.chat.batch_size=32",
                "train.chat.max_steps=750",
                "train.chat.warmup_steps=50",
                "train.chat.lr=1e-3",
                "train.chat.weight_decay=0.1",
                "train.chat.eval_every=75",
                "train.chat.checkpoint_every=150",
                "train.chat.log_every=25",
                "evaluate.chat.prompts=[What is a river?,What does a doctor do?,What does the word garden mean?,"
                "What is a window for?,What is a horse?,What does winter mean?,What is the ocean?,"
                "What is a kitchen for?,What does the word library mean?,What is a camera?]",
            ),
            synthesizes=True,
        ),
    )
}


def with_overrides(params: Path | str, overrides: list[str]) -> list[tuple[list[str], Any]]:
    """params.yaml after `dvc exp run -S o1 -S o2 ...`, parsed: one (overrides, data) pair
    per combination (a sweep such as `train.chat.lr=1e-3,2e-3` gives one each). The file
    itself is not touched."""
    from dvc.utils.hydra import InvalidArgumentError, apply_overrides, get_hydra_sweeps
    from hydra.errors import OverrideParseException

    from smolforge.core.params import read_yaml

    params = Path(params)
    if not params.is_file():
        raise StageError(f"{params}: file not found")
    try:
        sweeps = get_hydra_sweeps({params.name: list(overrides)})
    except (InvalidArgumentError, OverrideParseException) as e:
        raise StageError(f"-S {' '.join(overrides)}: not a valid override: {e}") from None
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / params.name
        for combination in sweeps:
            shutil.copyfile(params, copy)
            chosen = combination.get(params.name, [])
            try:
                apply_overrides(copy, chosen)
            except InvalidArgumentError as e:
                cause = f": {e.__cause__}" if e.__cause__ else ""
                raise StageError(f"-S {' '.join(chosen)}: {e}{cause}") from None
            out.append((chosen, read_yaml(copy)))
    return out
