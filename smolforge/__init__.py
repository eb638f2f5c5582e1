"""smolforge: a reproducible pipeline from raw material to small language models.

Importing the package does no I/O and sets nothing up; stages in `stages/` do that.
"""

__version__ = "0.1.0"
