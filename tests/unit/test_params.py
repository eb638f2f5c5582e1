"""smolforge.core.params: the typed loader (types, all errors at once, nested sections, DVC-style floats)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from smolforge.core.cli import StageError
from smolforge.core.params import load_params, parse_params, read_yaml


@dataclass(frozen=True)
class ModelShape:
    dim: int
    n_heads: int

    def check(self) -> list[str]:
        return [] if self.dim % self.n_heads == 0 else ["dim: expected a multiple of n_heads"]


@dataclass(frozen=True)
class TrainSection:
    seed: int
    learning_rate: float
    name: str
    shuffle: bool
    init: Literal["scratch", "pretrained"]
    betas: list[float]
    files: list[str]
    model: ModelShape

    def check(self) -> list[str]:
        return [] if self.learning_rate > 0 else ["learning_rate: expected > 0"]


@dataclass(frozen=True)
class LrOnly:
    lr: float


GOOD = """\
train:
  seed: 1234
  learning_rate: 3.0e-4
  name: tiny
  shuffle: true
  init: scratch
  betas: [0.9, 0.98]
  files: [a.txt, b.txt]
  model:
    dim: 64
    n_heads: 4
other:
  anything: [1, 2, 3]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(excinfo: pytest.ExceptionInfo) -> list[str]:
    """The indented problem lines of a load_params error message."""
    return [line.strip() for line in str(excinfo.value).splitlines()[1:]]


def test_section_loads_into_dataclass(tmp_path):
    p = load_params("train", TrainSection, write(tmp_path, GOOD))
    assert p == TrainSection(
        seed=1234,
        learning_rate=3.0e-4,
        name="tiny",
        shuffle=True,
        init="scratch",
        betas=[0.9, 0.98],
        files=["a.txt", "b.txt"],
        model=ModelShape(dim=64, n_heads=4),
    )
    assert type(p.seed) is int and type(p.learning_rate) is float


def test_dotted_section(tmp_path):
    path = write(tmp_path, "train:\n  nets:\n    lr: 0.5\n  chat:\n    lr: 0.25\n")
    assert load_params("train.chat", LrOnly, path) == LrOnly(0.25)
    assert load_params("train.nets", LrOnly, path) == LrOnly(0.5)


def test_every_problem_reported_at_once(tmp_path):
    text = GOOD.replace("learning_rate: 3.0e-4", "lerning_rate: 3.0e-4")  # unknown + missing
    text = text.replace("seed: 1234", "seed: true")  # bool is not an int
    text = text.replace("name: tiny", "name: 7")  # int is not a str
    text = text.replace("init: scratch", "init: scratchy")  # not in the Literal
    text = text.replace("betas: [0.9, 0.98]", "betas: [0.9, x]")  # bad list item
    text = text.replace("dim: 64", "dim: 6.5")  # float is not an int, nested
    with pytest.raises(StageError) as e:
        load_params("train", TrainSection, write(tmp_path, text))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'params.yaml'}: 7 problem(s) in section train:")
    assert sorted(problems(e)) == sorted(
        [
            "train.lerning_rate: unknown key (did you mean learning_rate?)",
            "train.learning_rate: missing key (float)",
            "train.seed: expected int, got True",
            "train.name: expected str, got 7",
            "train.init: expected one of 'scratch', 'pretrained', got 'scratchy'",
            "train.betas[1]: expected float, got 'x'",
            "train.model.dim: expected int, got 6.5",
        ]
    )


def test_unknown_key_without_close_match_has_no_suggestion(tmp_path):
    with pytest.raises(StageError) as e:
        load_params("train", LrOnly, write(tmp_path, "train:\n  lr: 0.1\n  zzzzzz: 1\n"))
    assert problems(e) == ["train.zzzzzz: unknown key"]


def test_int_accepted_for_float_and_becomes_float(tmp_path):
    p = load_params("train", LrOnly, write(tmp_path, "train:\n  lr: 1\n"))
    assert p.lr == 1.0 and type(p.lr) is float
    with pytest.raises(StageError, match=r"train\.lr: expected float, got False"):
        load_params("train", LrOnly, write(tmp_path, "train:\n  lr: false\n"))


def test_nested_check_hook_runs(tmp_path):
    with pytest.raises(StageError) as e:
        load_params("train", TrainSection, write(tmp_path, GOOD.replace("n_heads: 4", "n_heads: 5")))
    assert problems(e) == ["train.model.dim: expected a multiple of n_heads"]


def test_outer_check_hook_runs(tmp_path):
    with pytest.raises(StageError) as e:
        load_params("train", TrainSection, write(tmp_path, GOOD.replace("3.0e-4", "-1.0")))
    assert problems(e) == ["train.learning_rate: expected > 0"]


def test_a_nested_check_runs_beside_a_sibling_problem(tmp_path):
    text = GOOD.replace("n_heads: 4", "n_heads: 5").replace("seed: 1234", "seed: x")
    with pytest.raises(StageError) as e:
        load_params("train", TrainSection, write(tmp_path, text))
    # the model's own fields are sound, so its check runs; the outer check waits for a clean section
    assert problems(e) == [
        "train.seed: expected int, got 'x'",
        "train.model.dim: expected a multiple of n_heads",
    ]


def test_nested_section_must_be_a_mapping(tmp_path):
    text = GOOD.replace("  model:\n    dim: 64\n    n_heads: 4\n", "  model: 64\n")
    with pytest.raises(StageError) as e:
        load_params("train", TrainSection, write(tmp_path, text))
    assert problems(e) == ["train.model: expected a mapping of ModelShape fields, got 64"]


def test_list_field_rejects_a_scalar(tmp_path):
    with pytest.raises(StageError) as e:
        load_params(
            "train", TrainSection, write(tmp_path, GOOD.replace("files: [a.txt, b.txt]", "files: a.txt"))
        )
    assert problems(e) == ["train.files: expected list[str], got 'a.txt'"]


@pytest.mark.parametrize(
    "text, value",
    [
        ("2e-05", 2e-05),
        ("1e-3", 1e-3),
        ("1.0e-4", 1.0e-4),
        ("-3e-2", -3e-2),
        ("+1E3", 1000.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("1.", 1.0),
        ("-.inf", float("-inf")),
    ],
)
def test_floats_the_way_dvc_writes_them(tmp_path, text, value):
    path = write(tmp_path, f"train:\n  lr: {text}\n")
    assert read_yaml(path) == {"train": {"lr": value}}
    p = load_params("train", LrOnly, path)
    assert p.lr == value and type(p.lr) is float


def test_pyyaml_alone_reads_dvc_floats_as_strings():
    # why the loader exists: `dvc exp run -S train.lr=2e-5` writes `lr: 2e-05`
    assert yaml.safe_load("lr: 2e-05") == {"lr": "2e-05"}
    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}


def test_non_floats_keep_their_type(tmp_path):
    text = (
        "a: abc\nb: 1.2.3\nc: 42\nd: -7\ne: '2e-05'\nf: e5\ng: 1e\nh: 0x1f\ni: true\nj: null\n"
        "k: 2024-01-02\nl: 1_000\nm: v1.0e-4\n"
    )
    data = read_yaml(write(tmp_path, text))
    assert data["a"] == "abc"
    assert data["b"] == "1.2.3"
    assert data["c"] == 42 and type(data["c"]) is int
    assert data["d"] == -7 and type(data["d"]) is int
    assert data["e"] == "2e-05"  # quoted: a string on purpose
    assert data["f"] == "e5"
    assert data["g"] == "1e"
    assert data["h"] == 31
    assert data["i"] is True
    assert data["j"] is None
    assert str(data["k"]) == "2024-01-02"
    assert data["l"] == 1000 and type(data["l"]) is int
    assert data["m"] == "v1.0e-4"


def test_loader_does_not_change_pyyaml_globally(tmp_path):
    read_yaml(write(tmp_path, "lr: 2e-05\n"))
    assert yaml.safe_load("lr: 2e-05") == {"lr": "2e-05"}


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, "train:\n  lr: [1, 2\n")
    with pytest.raises(StageError, match=r"not valid YAML") as e:
        load_params("train", LrOnly, path)
    assert str(e.value).startswith(f"{path}:")


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(StageError) as e:
        load_params("train", LrOnly, path)
    assert str(e.value) == f"{path}: file not found"


@pytest.mark.parametrize("section", ["evaluate", "train.chat", "train.nets.lr.x"])
def test_missing_section(tmp_path, section):
    path = write(tmp_path, "train:\n  nets:\n    lr: 0.5\n")
    with pytest.raises(StageError) as e:
        load_params(section, LrOnly, path)
    assert str(e.value) == f"{path}: missing section {section}"


def test_parse_params_validates_a_mapping():
    assert parse_params({"dim": 8, "n_heads": 2}, ModelShape, "config.json") == ModelShape(8, 2)
    with pytest.raises(StageError) as e:
        parse_params({"dim": 8, "n_head": 2}, ModelShape, "config.json")
    assert problems(e) == [
        "config.json.n_head: unknown key (did you mean n_heads?)",
        "config.json.n_heads: missing key (int)",
    ]
