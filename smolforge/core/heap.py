"""Keep freed memory in the process while training on the CPU.

A training step allocates and frees activations of several MB each (a (B, T, F) MLP
tensor of the nets model is 9.4 MB). glibc's malloc serves blocks that large with
mmap and returns them to the kernel when freed, and trims the heap top past 128 KB, so
the next step's tensors arrive as fresh pages: a page fault and a zeroed 4 KB page per
touch. Measured on the nets model (bench/scratch.py, 2-core AMD EPYC): about 10,000
minor faults a step, and the scratch Llama trains ~6% faster (its SwiGLU and RoPE make
more temporaries than a GELU MLP) when freed memory stays in the heap for reuse.

`keep_freed_memory` raises the mmap threshold to glibc's maximum (32 MB on 64-bit) and
stops trimming, with `mallopt`, for the rest of the process. The cost is memory: the
heap keeps its high-water mark instead of shrinking between steps. A no-op where the C
library has no `mallopt` (macOS, musl) or when SMOLFORGE_KEEP_FREED=0.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# glibc's malloc.h
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound on 64-bit (4 MiB * sizeof(long))
NEVER_TRIM = 2**31 - 1  # mallopt takes an int; the largest means "never"
TOP_PAD = 64 * 1024 * 1024  # grow the heap in 64 MB steps: fewer brk calls


def keep_freed_memory() -> bool:
    """Make freed blocks stay in this process's heap; True when glibc took the settings."""
    if os.environ.get("SMOLFORGE_KEEP_FREED", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX),
            (M_TRIM_THRESHOLD, NEVER_TRIM),
            (M_TOP_PAD, TOP_PAD),
        )
    )
    log.debug("malloc keeps freed memory: %s", ok)
    return ok
