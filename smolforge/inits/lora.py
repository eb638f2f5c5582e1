"""init: lora — LoRA adapters (peft) on a pretrained base; only the adapters train.

What train writes at the end is the adapter alone (folder/adapter/) and the base with the
adapter merged in, so the HF output is an ordinary model that transformers and the GGUF
exporter load as they are. A checkpoint holds the adapters only
(smolforge.core.checkpoint.trainable_state).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from smolforge.core import pretrained
from smolforge.core.cli import StageError
from smolforge.core.train import LoraParams, TrainParams


def build(p: TrainParams, meta: dict, tokens_dir: Path, longest: int, rank: int):
    """The base in float32 with LoRA adapters on `p.lora.target_modules`."""
    model = add_lora(pretrained.load_for_training(p.base, meta, tokens_dir, longest), p.lora, p.seed)
    torch.manual_seed(p.seed + rank)  # adapter dropout draws from here, a stream per rank
    return model


def add_lora(model, lora: LoraParams, seed: int):
    """Wrap `model` with LoRA adapters on `lora.target_modules`; only they train."""
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in names]
    if missing:
        raise StageError(
            f"params.yaml: train.<model>.lora.target_modules: {missing} not in the base model "
            f"(it has e.g. {sorted(n for n in names if n.endswith('proj'))})"
        )
    torch.manual_seed(seed)  # the adapters' A matrices start random
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def save(model, folder: Path) -> None:
    """The base with the adapter merged in, and the adapter alone in folder/adapter/."""
    model.save_pretrained(folder / "adapter")
    sort_set_fields(model.peft_config["default"], folder / "adapter" / "adapter_config.json")
    model.merge_and_unload().save_pretrained(folder)


def sort_set_fields(config, path: Path) -> None:
    """Sort the lists peft writes from sets (target_modules): a set's order changes from
    process to process (str hashes are salted), and with it the file's bytes and dvc.lock."""
    fields = [k for k, v in vars(config).items() if isinstance(v, set)]
    data = json.loads(path.read_text(encoding="utf-8"))
    for k in fields:
        if isinstance(data.get(k), list):
            data[k] = sorted(data[k])
    path.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")  # as peft writes it
