"""Finetuning a pretrained base: LoRA adapters (peft) or every weight, and saving the result.

The training loop (stages/train.py) is the same as from scratch; what differs is where
the model starts, which parameters train, what a checkpoint holds (only the trainable
tensors: a LoRA state is a few MB, not the whole base) and what is written at the end
(for LoRA: the adapter alone, and the base with the adapter merged in, so the HF output
is an ordinary model that transformers and the GGUF exporter load as they are).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from smolforge import basemodel
from smolforge.cli import StageError, produced_by


def load_base(base: str, meta: dict, tokens_dir: Path):
    """The pretrained model in float32, checked against the token files' tokenizer."""
    if meta.get("tokenizer") != "base" or meta.get("base") != base:
        raise StageError(
            f"{tokens_dir}/meta.json: tokens were made with tokenizer {meta.get('tokenizer')!r} "
            f"(base {meta.get('base')!r}), but a finetune of {base!r} needs its own: set "
            f"pretokenize.<model>.tokenizer: base and base: {base} {produced_by('pretokenize')}"
        )
    model = basemodel.load_model(base, "float32")
    rows = model.get_input_embeddings().weight.shape[0]
    if meta["vocab_size"] > rows:
        raise StageError(
            f"{tokens_dir}/meta.json: vocab_size {meta['vocab_size']} exceeds the base's "
            f"{rows} embedding rows {produced_by('pretokenize')}"
        )
    model.config.pad_token_id = meta["pad_id"]
    return model


def add_lora(model, lora, seed: int):
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


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint must hold: the trainable parameters only."""
    keep = {name for name, q in model.named_parameters() if q.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in keep}


def load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    """Restore `trainable_state`; a missing or foreign tensor is an error, not a silent skip."""
    want = set(trainable_state(model))
    if set(state) != want:
        raise ValueError(
            f"checkpoint holds other tensors than this model trains ({len(state)} vs {len(want)})"
        )
    model.load_state_dict(state, strict=False)


def save(model, init: str, folder: Path) -> None:
    """Write the HF model directory: merged for LoRA (adapter in folder/adapter/)."""
    if init == "lora":
        model.save_pretrained(folder / "adapter")
        sort_set_fields(model.peft_config["default"], folder / "adapter" / "adapter_config.json")
        model = model.merge_and_unload()
    model.save_pretrained(folder)


def sort_set_fields(config, path: Path) -> None:
    """Sort the lists peft writes from sets (target_modules): a set's order changes from
    process to process (str hashes are salted), and with it the file's bytes and dvc.lock."""
    fields = [k for k, v in vars(config).items() if isinstance(v, set)]
    data = json.loads(path.read_text(encoding="utf-8"))
    for k in fields:
        if isinstance(data.get(k), list):
            data[k] = sorted(data[k])
    path.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")  # as peft writes it
