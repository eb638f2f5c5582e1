"""Test-only fault injection: Python imports this at start-up when its folder is on PYTHONPATH.

SMOLFORGE_KILL="STAGE WHEN PATTERN N" makes the process running that stage (`python -m
stages.STAGE`, and for a per-model stage `train@nets` also `--model nets`) kill itself with
SIGKILL, which runs no cleanup, exactly as a crash or the OOM killer would:

    WHEN before  just before its N-th os.replace onto a path containing PATTERN
         after   just after it (the file or folder has landed)

Every other process (dvc, git, the tests themselves) is left alone. The line it prints to
stderr before dying lets a test check that the kill happened where it was meant to.
"""

import os
import signal
import sys


def _is_target(stage: str) -> bool:
    argv = list(getattr(sys, "orig_argv", []))
    name, _, model = stage.partition("@")
    if f"stages.{name}" not in argv:
        return False
    return not model or any(a == "--model" and b == model for a, b in zip(argv, argv[1:]))


def _install(spec: str) -> None:
    stage, when, pattern, n = spec.split()
    if not _is_target(stage):
        return
    seen, real_replace = [0], os.replace

    def die(where: str) -> None:
        sys.stderr.write(f"killhook: SIGKILL {when} replace #{seen[0]} onto {where}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst, *args, **kwargs):
        hit = pattern in os.fsdecode(dst)
        if hit:
            seen[0] += 1
        if hit and when == "before" and seen[0] == int(n):
            die(os.fsdecode(dst))
        out = real_replace(src, dst, *args, **kwargs)
        if hit and when == "after" and seen[0] == int(n):
            die(os.fsdecode(dst))
        return out

    os.replace = replace


if os.environ.get("SMOLFORGE_KILL"):
    _install(os.environ["SMOLFORGE_KILL"])
