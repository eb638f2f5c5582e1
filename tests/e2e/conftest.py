"""The finished tiny pipeline, built once per session for the suites that only read it
(plots, remotes): each of them clones or renders from it and leaves it as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from smolforge.dev.sandbox import ROOT, built_repo


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> Path:
    """The project with tiny params after `dvc repro`, results committed on `main`."""
    return built_repo(
        tmp_path_factory.mktemp("finished") / "origin", ROOT / "tests/fixtures/params.tiny.yaml"
    )
