"""What a track's evaluate step hands stage evaluate to write."""

from __future__ import annotations

from dataclasses import dataclass

# Headline figures are rounded to this many decimals: accuracies are counts over a few
# thousand items at most, and the last digits of a float32 loss differ between machines.
DECIMALS = 4


@dataclass(frozen=True)
class Evaluation:
    metrics: dict  # the headline figures: LIVE/metrics.json (about 10, flat, stable names)
    tables: dict[str, tuple[list[dict], str, list[str]]]  # LIVE/plots/custom/<name>.json: rows, x, y
    files: dict[str, list[dict] | dict | str]  # OUT/<name>: JSONL records, JSON (a dict) or text
    summary: str  # the stage's closing log line


def rounded(figures: dict) -> dict:
    """`figures` with every float rounded to DECIMALS (ints and the rest as they are)."""
    return {k: round(v, DECIMALS) if isinstance(v, float) else v for k, v in figures.items()}
