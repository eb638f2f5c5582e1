"""Conflicts between sections of params.yaml: what one stage's section says that another's
must agree with.

Each stage's loader checks its own section (smolforge.core.params). A recipe switches
several sections at once, and some pairs must agree: a finetune keeps its base's
vocabulary, so pretokenize must tokenize with that base; format renders the special
tokens of the tokenizer pretokenize uses; Ollama's window must fit a scratch model's
context; every per-model section names the same models. Those pairs are checked here,
on the parsed YAML as it is (no track imports, no torch: it costs nothing), and every
stage's loader runs the check, so the first stage of a `dvc exp run` refuses a
conflicting file before any work. `python -m stages.check` lists the same conflicts
together with every section's own problems.

Each rule looks only at values of the right type and leaves the rest to the sections'
own loaders, which report them; a value that a stage ignores (`train.<m>.model` of a
LoRA finetune, `pretokenize.<m>.base` of a trained tokenizer) never conflicts.
"""

from __future__ import annotations

from typing import Any

PER_MODEL = ("format", "pretokenize", "train", "convert", "evaluate")
FINETUNES = ("lora", "full")  # inits that start from train.<m>.base and keep its vocabulary


def conflicts(data: Any) -> list[str]:
    """Every conflict between sections of a parsed params.yaml, each naming its keys."""
    if not isinstance(data, dict):
        return []
    out = _models(data)
    train = data.get("train")
    for model in sorted(train) if isinstance(train, dict) else []:
        sections = {name: value(data, name, model) for name in PER_MODEL}
        out += _tokenizer(model, sections)
        out += _context(model, sections)
    return out


def value(data: Any, *keys: str) -> Any:
    """data[k1][k2]..., or None where a level is missing or not a mapping."""
    node: Any = data
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _models(data: dict) -> list[str]:
    """Every per-model section names the same models (dvc.yaml runs one instance each)."""
    present = {name: set(data[name]) for name in PER_MODEL if isinstance(data.get(name), dict)}
    out = []
    for model in sorted(set().union(*present.values())):
        missing = [name for name in present if model not in present[name]]
        if missing:
            having = [f"{name}.{model}" for name in present if name not in missing]
            out.append(
                f"{', '.join(f'{name}.{model}' for name in missing)}: missing, while "
                f"{', '.join(having)} name model {model!r} (each per-model section names the same models)"
            )
    return out


def _tokenizer(model: str, s: dict[str, Any]) -> list[str]:
    """A finetune tokenizes with its base; format renders the tokenizer's own specials."""
    init = value(s, "train", "init")
    base = value(s, "train", "base")
    backend = value(s, "pretokenize", "tokenizer")
    tok_base = value(s, "pretokenize", "base")
    fmt_tok = value(s, "format", "tokenizer")
    out = []
    if init in FINETUNES and isinstance(backend, str) and backend != "base":
        out.append(
            f"pretokenize.{model}.tokenizer {backend!r} vs train.{model}.init {init!r}: a {init} "
            f"finetune keeps its base's vocabulary, so it needs pretokenize.{model}.tokenizer: base "
            f"(a new vocabulary needs train.{model}.init: scratch)"
        )
    if backend != "base" or not isinstance(tok_base, str):
        return out
    if init in FINETUNES and isinstance(base, str) and base != tok_base:
        out.append(
            f"pretokenize.{model}.base {tok_base!r} vs train.{model}.base {base!r}: a {init} finetune "
            f"is trained on ids of its own base's tokenizer; set both to the same base"
        )
    if isinstance(fmt_tok, str) and fmt_tok != tok_base:
        out.append(
            f"format.{model}.tokenizer {fmt_tok!r} vs pretokenize.{model}.base {tok_base!r}: format "
            f"renders the chat template and special tokens of its tokenizer, which must be the one "
            f"pretokenize tokenizes with; set both to the same base"
        )
    return out


def _context(model: str, s: dict[str, Any]) -> list[str]:
    """Ollama's window fits a scratch model's context (a base's is known only once loaded;
    `auto` on either side is resolved by the stages from the data)."""
    num_ctx = value(s, "convert", "modelfile", "num_ctx")
    seq_len = value(s, "train", "model", "max_seq_len")
    if value(s, "train", "init") != "scratch" or not (_is_int(num_ctx) and _is_int(seq_len)):
        return []
    if num_ctx <= seq_len:
        return []
    return [
        f"convert.{model}.modelfile.num_ctx {num_ctx} vs train.{model}.model.max_seq_len {seq_len}: "
        f"Ollama's window cannot exceed the model's context; set num_ctx to at most {seq_len}, or auto"
    ]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
