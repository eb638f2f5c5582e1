"""The model card: one typed, versioned record of what a model is, with one writer and one reader.

What a model was trained to do travels as a `Task` from stage format (its meta.json
"task"), through pretokenize's meta.json unchanged, into the card that stage train writes
beside the model as `smolforge.json`:

    {"card_version": 1,
     "task": {"task": "nets" | "chat", "chat_style", "chat_template", "stop": [...],
              "system", "layout": {...}},
     "tokenizer": backend, "tokenizer_sha256", "init", "base", "train_params": {...}}

`layout` is the track's own description of its text (the nets track's
`smolforge.nets.layouts.Layout`; empty for chat); this module carries it without reading
it, so a new layout field needs no change here. convert, evaluate, the chat command and
the GGUF exporter read a card through `read_card` only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from smolforge.core.cli import StageError, produced_by
from smolforge.core.io import write_json
from smolforge.core.params import parse_params

CARD_FILE = "smolforge.json"
CARD_VERSION = 1
TaskName = Literal["nets", "chat"]


@dataclass(frozen=True)
class Task:
    """What a model was trained to do: written by format, read by every later stage."""

    task: TaskName
    chat_style: str  # smolforge.core.styles name
    chat_template: str  # the Jinja template training text was rendered with
    stop: list[str]  # besides EOS, what ends an assistant turn
    system: str  # persona context of every chat example ('' none)
    layout: dict[str, Any]  # the track's text layout (nets); {} where a track has none

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelCard:
    """What train writes beside a model (`smolforge.json`)."""

    card_version: int
    task: Task
    tokenizer: str  # the pretokenize backend (base, sentencepiece, tiktoken, byte_bpe)
    tokenizer_sha256: str
    init: str  # scratch | lora | full
    base: str | None  # the pretrained model a finetune started from
    train_params: dict[str, Any]  # train's whole params section, as run

    def check(self) -> list[str]:
        if self.card_version != CARD_VERSION:
            return [f"card_version: {self.card_version} is not one this smolforge reads ({CARD_VERSION})"]
        return []


def parse_task(data: Any, where: str, stage: str) -> Task:
    """A `task` record checked field by field; a problem names `where` and the stage that wrote it."""
    try:
        return parse_params(data, Task, "task")
    except StageError as e:
        raise StageError(f"{where}: {e} {produced_by(stage)}") from None


def write_card(folder: Path, card: ModelCard) -> None:
    """Write `folder/smolforge.json` (inside train's atomic output directory)."""
    if card.check():
        raise ValueError(card.check()[0])
    write_json(Path(folder) / CARD_FILE, dataclasses.asdict(card))


def read_card(folder: Path | str) -> ModelCard:
    """The card of a model directory written by train; every field checked, or a StageError
    naming the file and the stage that writes it."""
    path, where = Path(folder) / CARD_FILE, produced_by("train")
    if not path.is_file():
        raise StageError(f"{path}: file not found {where}")
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise StageError(f"{path}: not valid JSON ({e.msg}) {where}") from None
    except UnicodeDecodeError as e:
        raise StageError(f"{path}: not valid JSON (not UTF-8: {e.reason}) {where}") from None
    if isinstance(data, dict) and data.get("card_version") != CARD_VERSION:
        found = data.get("card_version", "none")
        raise StageError(
            f"{path}: card_version {found} is not one this smolforge reads ({CARD_VERSION}); "
            f"retrain the model {where}"
        )
    try:
        return parse_params(data, ModelCard, "card")
    except StageError as e:
        raise StageError(f"{path}: {e} {where}") from None
