"""Determinism and param tracking under real DVC: each params section reaches exactly its own
stage, and a changed param reruns only what depends on it. (A forced `dvc repro -f` giving
the same dvc.lock byte for byte is checked by tests/e2e/test_repro.py, with the real models.)
And what the crash test found not to be: a LoRA adapter's config written in set order."""

from __future__ import annotations

import copy
import json

import pytest

from tests.reliability.conftest import TARGETS, ran

# one param of every section -> a new value; each must change exactly its own stage
CHANGES = {
    "generate": ("n_ood", 11),
    "scrape": ("max_pages", 49),
    "synthesize": ("seed", 8),
    "format.nets": ("seed", 8),
    "pretokenize.nets": ("vocab_size", 271),
    "train.nets": ("lr", 2e-3),
    "convert.nets": ("parity_examples", 3),
    "evaluate.nets": ("batch_size", 32),
    "format.chat": ("seed", 8),
    "pretokenize.chat": ("base", "other"),
    "train.chat": ("lr", 2e-2),
}  # (convert.chat and evaluate.chat reach stages this repo does not build; tests/test_dvc_yaml.py
#     checks statically that every stage declares exactly its own section)


def stage_of(section: str) -> str:
    return section.replace(".", "@")


def node(data: dict, section: str) -> dict:
    for part in section.split("."):
        data = data[part]
    return data


@pytest.mark.e2e
@pytest.mark.slow
def test_each_param_reaches_exactly_its_own_stage(pipeline):
    original = pipeline.params()
    changed = copy.deepcopy(original)
    for section, (key, value) in CHANGES.items():
        node(changed, section)[key] = value
    pipeline.set_params(changed)
    try:
        out = pipeline.dvc("status", "--json", "--with-deps", *TARGETS)
        status = json.loads(out.strip().splitlines()[-1])
    finally:
        pipeline.set_params(original)
    seen = {}
    for stage, changes in status.items():
        for change in changes:
            if isinstance(change, dict):
                params = change.get("changed deps", {}).get("params.yaml", {})
                seen.setdefault(stage, set()).update(params)
    # DVC names the section a stage declares (the whole of it), so each must see its own
    assert seen == {stage_of(section): {section} for section in CHANGES}


@pytest.mark.e2e
@pytest.mark.slow
def test_a_changed_param_reruns_its_stage_and_nothing_whose_inputs_did_not_change(pipeline):
    """scrape.user_agent enters scrape; the shipped site answers every agent alike, so scrape's
    output is the same and synthesize (which reads it) is not rerun."""
    original = pipeline.params()
    changed = copy.deepcopy(original)
    changed["scrape"]["user_agent"] = "smolforge-test/0.2"
    pipeline.set_params(changed)
    assert ran(pipeline.repro()) == {"scrape"}
    pipeline.set_params(original)
    pipeline.repro()  # back (DVC may restore scrape's output from its run cache)
    assert pipeline.lock() == pipeline.reference_lock


class Shuffled(set):
    """A set that iterates in reverse order: what another process's string hashing may give."""

    def __iter__(self):
        return iter(sorted(super().__iter__(), reverse=True))


def test_a_lora_adapter_is_written_the_same_whatever_order_a_set_iterates_in(tiny_base, tmp_path):
    """peft keeps target_modules as a set; its order in adapter_config.json must not depend on
    the process (the crash test found a resumed LoRA run writing q_proj and v_proj swapped)."""
    from smolforge.core import pretrained
    from smolforge.core.train import LoraParams
    from smolforge.inits import lora

    adapter = LoraParams(r=2, alpha=4.0, dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"])
    written = []
    for order in (set, Shuffled):
        model = lora.add_lora(pretrained.load_model(str(tiny_base)), adapter, seed=0)
        config = model.peft_config["default"]
        config.target_modules = order(config.target_modules)
        lora.save(model, tmp_path / order.__name__)
        written.append((tmp_path / order.__name__ / "adapter/adapter_config.json").read_bytes())
    assert written[0] == written[1]
    assert json.loads(written[0])["target_modules"] == ["o_proj", "q_proj", "v_proj"]
