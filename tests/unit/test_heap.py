"""smolforge.core.heap: freed memory stays in the process, measured by page faults (not
time) in a fresh interpreter, so the test process's own heap is left as it was."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from smolforge.core import heap

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# training steps of the nets-shaped Llama on batches whose length varies, as length
# buckets make them: each step's activations have other sizes than the last's
STEPS = """
import json, random, resource, sys, torch, torch.nn.functional as F
from smolforge.core import heap, model as model_lib
from smolforge.core.model import LlamaShape
kept = heap.keep_freed_memory() if sys.argv[1] == "keep" else False
torch.set_num_threads(2)
shape = LlamaShape(dim=128, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=384, max_seq_len=128, rope_theta=1e4)
model = model_lib.build(model_lib.llama_config(shape, 272, 1, 2, 0), 0)
opt = torch.optim.AdamW(model.parameters())
x = torch.randint(3, 272, (64, 97), generator=torch.Generator().manual_seed(0))
lengths = random.Random(0)
def step():
    T = lengths.randint(30, 96)
    logits = model(input_ids=x[:, :T]).logits
    F.cross_entropy(logits.flatten(0, 1), x[:, 1 : T + 1].flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()  # warm up: the first steps fault in the pages every later step reuses
before = faults()
for _ in range(10):
    step()
print(json.dumps({"kept": kept, "faults_per_step": (faults() - before) / 10}))
"""


def faults_per_step(mode: str) -> dict:
    env = os.environ | {"SMOLFORGE_KEEP_FREED": "1"}
    out = subprocess.run(
        [sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True, env=env
    ).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_training_steps_reuse_freed_pages():
    default, kept = faults_per_step("default"), faults_per_step("keep")
    assert default["kept"] is False and kept["kept"] is True
    # measured: 2,800-5,500 faults a step with glibc's defaults (its heap top is trimmed and
    # large blocks come from fresh mmaps), 440-600 with freed memory kept
    assert kept["faults_per_step"] * 3 < default["faults_per_step"], (default, kept)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("SMOLFORGE_KEEP_FREED", "0")
    assert heap.keep_freed_memory() is False
