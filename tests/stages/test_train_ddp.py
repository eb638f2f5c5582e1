"""Stage train under torchrun: 2 CPU processes (DDP, gloo) follow the single process's loss
curve at the same global batch, and rank 0 alone writes the outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages import train
from tests.conftest import ROOT, chat_train_argv, listing, train_argv

pytestmark = pytest.mark.slow

# Two ranks compute the same sums in another order (each pads its share to its own
# longest example; the gradient is summed over ranks instead of over one batch), so the
# curves agree up to float rounding, amplified a little by Adam. Measured on the tiny
# params: the curves are identical at the 6 significant digits they are written with,
# and the final weights differ by at most 1.2e-6. A real bug (a share lost or counted
# twice, a loss not rescaled, a count not global) moves the loss by 1e-2 or more.
TOLERANCE = 1e-4


def curve(path: Path) -> list[list[float]]:
    """dvclive's step series (step<TAB>value rows under a header)."""
    return [[float(v) for v in line.split("\t")] for line in path.read_text().splitlines()[1:]]


def torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m stages.train ARGV` from the repo root."""
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [*cmd, "-m", "stages.train", *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    return res


def assert_same_curves(two: Path, one: Path) -> None:
    for name in ("train_loss", "val_loss", "lr"):
        path = f"train/plots/metrics/{name}.tsv"
        a_rows, b_rows = curve(two / path), curve(one / path)
        assert [r[0] for r in a_rows] == [r[0] for r in b_rows] != [], name  # the same steps
        for a, b in zip(a_rows, b_rows):
            # the learning rate: exactly
            assert abs(a[1] - b[1]) <= (0 if name == "lr" else TOLERANCE), (name, a, b)


def test_two_processes_match_one_at_the_same_global_batch(tiny_run, tmp_path):
    out = tmp_path / "run"
    paths = {**tiny_run, "hf": out / "hf", "state": out / "state"}
    m = out / "metrics"
    res = torchrun(train_argv(tiny_run["params"], paths, m))

    single = tiny_run["dir"] / "metrics"
    assert_same_curves(m, single)
    ours = json.loads((m / "train/metrics.json").read_text())
    theirs = json.loads((single / "train/metrics.json").read_text())
    assert {k: ours[k] for k in ("step", "tokens_seen", "n_params")} == {
        k: theirs[k] for k in ("step", "tokens_seen", "n_params")
    }
    assert json.loads((m / "train_timing.json").read_text())["processes"] == 2

    # rank 0 alone wrote, once: the outputs and nothing else (no second copy, no temp file)
    assert listing(out) == sorted(
        ["hf", "metrics", "state", "state/ckpt.pt"]
        + [f"hf/{p.name}" for p in paths["hf"].iterdir()]
        + [
            "metrics/train",
            "metrics/train/metrics.json",
            "metrics/train/plots",
            "metrics/train/plots/metrics",
        ]
        + [f"metrics/train/plots/metrics/{n}.tsv" for n in ("lr", "train_loss", "val_loss")]
        + ["metrics/train_timing.json"]
    )
    assert sorted(p.name for p in paths["hf"].iterdir()) == sorted(p.name for p in tiny_run["hf"].iterdir())
    assert res.stderr.count("done: 12 steps") == 1  # rank 0 alone logs


def test_lora_adapters_train_under_two_processes_as_in_one(tiny_chat_run, tmp_path):
    import yaml

    # adapter dropout draws a stream per rank, so compare without it
    params = tmp_path / "params.yaml"
    data = yaml.safe_load(tiny_chat_run["params"].read_text())
    data["train"]["chat"]["lora"]["dropout"] = 0.0
    params.write_text(yaml.safe_dump(data))
    runs = {
        n: {**tiny_chat_run, "hf": tmp_path / n / "hf", "state": tmp_path / n / "state"} for n in ("1", "2")
    }
    train.main(chat_train_argv(params, runs["1"], tmp_path / "1/metrics"))
    torchrun(chat_train_argv(params, runs["2"], tmp_path / "2/metrics"))
    assert_same_curves(tmp_path / "2/metrics", tmp_path / "1/metrics")
    assert (runs["2"]["hf"] / "adapter" / "adapter_config.json").is_file()
