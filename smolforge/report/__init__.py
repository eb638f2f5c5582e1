"""The report card: REPORT.md and its PNG plots, from every stage's metrics (stage report)."""
