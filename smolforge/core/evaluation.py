"""What a track's evaluate step hands stage evaluate to write."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Evaluation:
    metrics: dict  # METRICS (JSON)
    plot_header: str  # PLOT's CSV header line
    plot_rows: list[str]  # PLOT's CSV lines, formatted
    files: dict[str, list[dict] | str]  # OUT/<name>: JSONL records (a list) or text (a str)
    summary: str  # the stage's closing log line
