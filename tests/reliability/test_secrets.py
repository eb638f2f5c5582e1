"""Secrets: the API key comes only from the environment variable that params name; a
recognisable fake key is sent to the (fake, loopback) server and found nowhere else: not in
dvc.lock, params.yaml, metrics, outputs, caches, DVC's own cache, nor any log, even when the
server echoes it back in an error or logging is at DEBUG."""

from __future__ import annotations

import json
import logging

import pytest

from smolforge.core.cli import run
from stages import synthesize
from tests import fakeopenai as fake
from tests.reliability.conftest import KEY, KEY_ENV, set_section, synth_argv


def files_holding(folder, secret: str) -> list[str]:
    """Files under `folder` (git's objects excepted: compressed) whose bytes contain `secret`."""
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(folder).parts and secret.encode() in p.read_bytes()
    ]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_dvc_run_sends_the_key_and_writes_it_nowhere(pipeline, llm):
    srv, _ = llm
    sent = {p.headers.get("authorization") for p in srv.posts()}
    assert sent == {f"Bearer {KEY}"}  # every request carried it
    params = (pipeline.path / "params.yaml").read_text()
    assert f"api_key_env: {KEY_ENV}" in params and KEY not in params
    assert KEY_ENV in pipeline.lock()  # the name is a tracked param; the value is not
    assert files_holding(pipeline.path, KEY) == []  # .dvc/cache and .dvc/tmp included
    assert not [out for out in pipeline.log if KEY in out]  # everything dvc and the stages printed


def echo_key(code: int) -> fake.Fault:
    """An error whose body quotes the Authorization header back (some proxies do)."""
    return lambda h, _: h.send(
        code, json.dumps({"error": {"message": f"bad: {h.headers['Authorization']}"}}).encode()
    )


def test_an_error_that_echoes_the_key_and_debug_logs_do_not_leak_it(
    synth_dir, tiny_params, caplog, capfd, monkeypatch
):
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")  # the openai and httpx loggers included
    caplog.set_level(logging.DEBUG)
    with fake.serve() as srv:
        set_section(tiny_params, "synthesize", base_url=srv.base_url, max_failed_share=0.5)
        srv.inject(echo_key(400), echo_key(500), echo_key(500))
        assert run(synthesize.main, synth_argv(tiny_params)) == 0
        srv.inject(echo_key(401))
        set_section(tiny_params, "synthesize", seed=99)  # new requests: the cache has none
        assert run(synthesize.main, synth_argv(tiny_params)) == 2
    assert "HTTP 400" in caplog.text and "refused the API key" in caplog.text
    assert all(p.headers["authorization"] == f"Bearer {KEY}" for p in srv.posts())
    captured = capfd.readouterr()
    assert KEY not in caplog.text and KEY not in captured.out + captured.err
    assert files_holding(synth_dir, KEY) == []
