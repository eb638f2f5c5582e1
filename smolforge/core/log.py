"""Logging and progress bars, configured by the stage's `main()`, never at import."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def setup(stage: str) -> logging.Logger:
    """Send `HH:MM:SS LEVEL stage: message` lines to stderr; level from $LOG_LEVEL."""
    root = logging.getLogger()
    for h in list(root.handlers):  # replace our own handler only (pytest adds its own)
        if getattr(h, "smolforge", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.smolforge = True
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {stage}: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    return logging.getLogger(f"stages.{stage}")


def progress(items: Iterable[T] | None = None, **kwargs) -> Iterable[T]:
    """tqdm that switches itself off when stderr is not a terminal (CI, dvc logs)."""
    from tqdm.auto import tqdm

    return tqdm(items, disable=None, leave=False, dynamic_ncols=True, **kwargs)
