"""Tools for smolforge's own tests and benchmarks; no stage imports this package."""
