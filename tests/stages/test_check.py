"""python -m stages.check: every documented recipe's set passes on params.yaml; conflicting
sets are refused with every conflict named by its keys, at once; every stage's loader
refuses a conflicting file before any work."""

from __future__ import annotations

import shlex

import pytest
import yaml

from smolforge.core import crosscheck, recipes
from smolforge.core.cli import run
from smolforge.core.params import read_yaml
from stages import check, pretokenize
from tests.conftest import ROOT, listing

PARAMS = ROOT / "params.yaml"


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("error: ")]


@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_every_recipe_set_passes_the_check(name, caplog):
    assert run(check.main, ["--params", str(PARAMS), "--recipe", name]) == 0, caplog.text
    assert "sections sound, no conflicts between them" in caplog.text


def test_the_recipes_switch_what_they_say():
    (variant,) = [
        d for _, d in recipes.with_overrides(PARAMS, list(recipes.RECIPES["chat-builder"].overrides))
    ]
    assert variant["format"]["chat"]["chat_style"] == "chat_builder"
    assert variant["pretokenize"]["chat"]["tokenizer"] == "sentencepiece"
    assert variant["train"]["chat"]["init"] == "scratch"
    # what the recipe does not say is derived or ignored, not asked for
    assert variant["train"]["chat"]["model"]["max_seq_len"] == "auto"
    assert read_yaml(PARAMS) == recipes.with_overrides(PARAMS, [])[0][1]  # the file untouched


def test_a_conflicting_set_names_every_conflict_at_once(caplog, tmp_path):
    before = PARAMS.read_bytes()
    argv = ["--params", str(PARAMS), "-S", "pretokenize.chat.base=/models/other"]
    argv += ["-S", "train.nets.model.max_seq_len=256", "-S", "convert.nets.modelfile.num_ctx=4096"]
    assert run(check.main, argv) == 2
    (msg,) = errors(caplog)
    assert "3 conflict(s) between sections" in msg
    for keys in (
        "pretokenize.chat.base '/models/other' vs train.chat.base 'embedded'",
        "format.chat.tokenizer 'embedded' vs pretokenize.chat.base '/models/other'",
        "convert.nets.modelfile.num_ctx 4096 vs train.nets.model.max_seq_len 256",
    ):
        assert keys in msg, msg
    assert PARAMS.read_bytes() == before


def test_a_finetune_needs_its_base_tokenizer_and_a_section_problem_comes_with_it(caplog):
    argv = ["--params", str(PARAMS), "-S", "pretokenize.chat.tokenizer=byte_bpe", "-S", "train.chat.lr=-1"]
    assert run(check.main, argv) == 2
    (msg,) = errors(caplog)
    assert "pretokenize.chat.tokenizer 'byte_bpe' vs train.chat.init 'lora'" in msg
    assert "needs pretokenize.chat.tokenizer: base" in msg
    assert "train.chat.min_lr: expected 0 <= min_lr <= lr" in msg  # the section's own check, too


def test_a_sweep_is_checked_combination_by_combination(caplog):
    argv = ["--params", str(PARAMS), "--recipe", "chat-builder", "-S", "train.chat.model.max_seq_len=auto,64"]
    argv += ["-S", "convert.chat.modelfile.num_ctx=128"]
    assert run(check.main, argv) == 2
    (msg,) = errors(caplog)
    assert "-S train.chat.model.max_seq_len=64 -S convert.chat.modelfile.num_ctx=128:" in msg
    assert "convert.chat.modelfile.num_ctx 128 vs train.chat.model.max_seq_len 64" in msg
    assert msg.count("conflict(s) between sections") == 1  # auto: resolved from the data


def test_every_per_model_section_names_the_same_models():
    data = read_yaml(PARAMS)
    del data["evaluate"]["chat"]
    data["convert"]["extra"] = data["convert"]["chat"]
    found = crosscheck.conflicts(data)
    assert any(c.startswith("evaluate.chat: missing, while format.chat, pretokenize.chat") for c in found), (
        found
    )
    assert any(
        c.startswith("format.extra, pretokenize.extra, train.extra, evaluate.extra: missing") for c in found
    )


def test_rules_skip_values_of_the_wrong_type():
    data = read_yaml(PARAMS)
    data["pretokenize"]["chat"]["tokenizer"] = ["base"]  # its own loader says what is wrong
    data["train"]["chat"] = "lora"
    assert crosscheck.conflicts(data) == []
    assert crosscheck.conflicts(None) == [] and crosscheck.conflicts({"train": 3}) == []


def test_a_stage_refuses_a_conflicting_file_before_any_work(tmp_path, caplog):
    data = read_yaml(PARAMS)
    data["pretokenize"]["chat"]["base"] = "/models/other"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    argv = ["--params", str(params), "--model", "nets", "--in", str(tmp_path / "missing")]
    rc = run(pretokenize.main, [*argv, "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json")])
    assert rc == 2  # a nets stage too: the file as a whole is refused, before its input is read
    (msg,) = errors(caplog)
    assert f"{params}: 2 conflict(s) between sections (python -m stages.check" in msg
    assert "pretokenize.chat.base '/models/other' vs train.chat.base 'embedded'" in msg
    assert listing(tmp_path) == ["params.yaml"]


def test_list_prints_every_recipe_with_its_set(capsys):
    assert run(check.main, ["--list"]) == 0
    out = capsys.readouterr().out
    for r in recipes.RECIPES.values():
        assert f"{r.name} ({r.origin})" in out
        assert " ".join(f"-S {shlex.quote(o)}" for o in r.overrides) in out


def documented_sets() -> list[tuple[str, list[str]]]:
    """Every `dvc exp run ... -S` command of README.md and docs/ (the experiment log, a
    record of past runs, left out): (page:line, its -S values)."""
    out = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if page.name == "experiments.md":
            continue
        lines, i = page.read_text().splitlines(), 0
        while i < len(lines):
            start, line = i + 1, lines[i]
            while line.endswith("\\") and i + 1 < len(lines):  # a continued shell line
                i += 1
                line = line[:-1] + " " + lines[i]
            i += 1
            command = line.split(" #")[0]
            if not command.lstrip().startswith("dvc exp run") or " -S " not in command:
                continue
            words = shlex.split(command)
            sets = [words[k + 1] for k, w in enumerate(words) if w in ("-S", "--set-param")]
            out.append((f"{page.relative_to(ROOT)}:{start}", sets))
    return out


def test_every_documented_set_is_one_dvc_accepts_and_the_check_passes(caplog):
    found = documented_sets()
    assert len(found) >= 10 and any(w.startswith("docs/chat.md") for w, _ in found)
    # the recipes' page shows each set exactly as smolforge/core/recipes.py has it
    page = " ".join((ROOT / "docs/chat.md").read_text().replace("\\\n", " ").split())
    for r in recipes.RECIPES.values():
        assert " ".join(f"-S {shlex.quote(o)}" for o in r.overrides) in page, r.name
    failed = []
    for where, sets in found:
        caplog.clear()
        if run(check.main, ["--params", str(PARAMS), *(a for o in sets for a in ("-S", o))]) != 0:
            failed.append(f"{where}: {errors(caplog)}")
    assert not failed, "\n".join(failed)


def test_the_at_scale_set_asks_for_thousands_of_shipped_words():
    from smolforge.llm.tasks import read_words

    r = recipes.RECIPES["chat-builder-at-scale"]
    assert r.synthesizes and set(recipes.RECIPES["chat-builder"].overrides) < set(r.overrides)
    (_, data), = recipes.with_overrides(PARAMS, list(r.overrides))
    words = read_words(str(ROOT / data["synthesize"]["conversations"]["words"]))
    assert len(words) >= 2000 and all(w.isalpha() and w.islower() for w in words)
    assert data["synthesize"]["tasks"] == ["conversations"]
    # the default stays small: the at-scale list is an experiment, not the default
    assert len(read_words(str(ROOT / read_yaml(PARAMS)["synthesize"]["conversations"]["words"]))) <= 100
