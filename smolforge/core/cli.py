"""The error convention shared by every stage.

A `StageError` is a problem the user can fix (bad params, a missing or malformed input):
`run()` logs it as one line without a traceback and exits 2. Anything else is a bug and
keeps its traceback (exit 1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

log = logging.getLogger("smolforge")


class StageError(Exception):
    """A user-fixable problem; the message says what is wrong and how to fix it."""


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Call a stage's `main` and turn the outcome into an exit status (0, 1 or 2)."""
    try:
        main(argv)
    except StageError as e:
        if not logging.getLogger().handlers:
            logging.basicConfig(format="%(message)s")
        log.error("error: %s", e)
        return 2
    return 0


def produced_by(stage: str) -> str:
    """The hint appended to messages about a missing or malformed upstream file."""
    return f"(written by stage {stage}; run: dvc repro {stage})"
