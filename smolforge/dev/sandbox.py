"""A throwaway copy of the project in a new git repository, for end-to-end tests and benchmarks.

The copy holds the project's source files as git lists them (tracked and untracked, not
ignored), never the committed run's products (`RESULTS`), so `dvc repro` there builds
everything from scratch. Commands run with this interpreter's bin folder first on PATH
(the `dvc` beside it), DVC analytics off, and a fixed git identity.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ("data/", "models/", "metrics/", "dvc.lock")  # the committed run's products: not copied


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment commands in a sandbox run with, plus `extra`."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "smolforge",
        "GIT_AUTHOR_EMAIL": "sandbox@smolforge.invalid",
        "GIT_COMMITTER_NAME": "smolforge",
        "GIT_COMMITTER_EMAIL": "sandbox@smolforge.invalid",
        **(extra or {}),
    }


def sh(cwd: Path, *cmd: str, check: bool = True, extra_env: dict[str, str] | None = None) -> str:
    """Run `cmd` in `cwd` (with `extra_env` added to `env()`); its stdout and stderr together.
    A failure (with `check`) raises with both, so a test or benchmark says what went wrong."""
    res = subprocess.run(cmd, cwd=cwd, env=env(extra_env), capture_output=True, text=True)
    if check and res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}) in {cwd}:\n{res.stdout}\n{res.stderr}")
    return res.stdout + res.stderr


def copy_project(dst: Path) -> None:
    """The project's source files (not its results) into `dst`."""
    files = sh(ROOT, "git", "ls-files", "--cached", "--others", "--exclude-standard").split()
    for rel in files:
        if rel.startswith(RESULTS) or not (ROOT / rel).is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)


def new_repo(dst: Path, params: Path | dict | None = None) -> Path:
    """A copy of the project at `dst` as a fresh git repository with one commit; `params`
    (a file or a mapping) replaces params.yaml."""
    dst.mkdir(parents=True, exist_ok=True)
    copy_project(dst)
    if isinstance(params, dict):
        (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    elif params is not None:
        shutil.copy(params, dst / "params.yaml")
    sh(dst, "git", "init", "-q", "-b", "main")
    sh(dst, "git", "add", "-A")
    sh(dst, "git", "commit", "-qm", "sandbox")
    return dst


def ran(output: str) -> set[str]:
    """The stages a `dvc repro` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def built_repo(dst: Path, params: Path | dict | None = None) -> Path:
    """`new_repo` after a full `dvc repro`, its results committed: a finished pipeline to
    push, clone, plot or branch from (a few minutes with the tiny params)."""
    new_repo(dst, params)
    sh(dst, "dvc", "repro")
    sh(dst, "git", "add", "-A")
    sh(dst, "git", "commit", "-qm", "run")
    return dst


def clone(src: Path, dst: Path) -> Path:
    """A git clone of the sandbox `src` at `dst`: its committed files, no DVC cache or outputs."""
    sh(src.parent, "git", "clone", "-q", str(src), str(dst))
    return dst
