"""Fused CPU kernels for the training Llama, built on this machine on first use.

`cpu_kernels.cpp` holds float32 kernels (forward and backward) for SwiGLU, x / rms(x),
RoPE, and RoPE with causal attention in one: each one pass where torch ops make three
to five over a tensor that does not fit in cache, and attention head by head in cache
over the causal half only. smolforge/core/llama.py calls them (torch.ops.smolforge)
when `usable` says so, and torch ops otherwise: the kernels change speed, not the
function (tests/unit/test_cpu_kernels.py checks them against the torch ops to float
rounding). Measured in bench/scratch.py.

The library is compiled once per machine with the C++ compiler (`$CXX`, else `c++`),
`-march=native`, and torch's headers, into the kernel cache
(`$SMOLFORGE_KERNEL_CACHE`, default ~/.cache/smolforge/kernels), keyed by the source,
the torch version, the compiler and the CPU's flags, and written atomically; later
loads take milliseconds. Without a compiler, or where the build fails, training runs
on torch ops and says so once in its log. SMOLFORGE_CPU_KERNELS=0 turns the kernels
off (the A/B switch for benchmarks).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
BUILD_TIMEOUT_S = 300


def enabled() -> bool:
    return os.environ.get("SMOLFORGE_CPU_KERNELS", "1") != "0"


def cache_root() -> Path:
    env = os.environ.get("SMOLFORGE_KERNEL_CACHE", "")
    return Path(env) if env else Path.home() / ".cache" / "smolforge" / "kernels"


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def cpu_flags() -> str:
    """The CPU's model and feature flags (what -march=native compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def torch_dirs() -> tuple[Path, Path]:
    root = Path(torch.__file__).parent
    return root / "include", root / "lib"


def build_command(cxx: str, source: Path, out: Path) -> list[str]:
    include, lib = torch_dirs()
    return [
        cxx, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++20", "-w",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}",
        f"-I{include}", f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}",
        str(source), f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}", "-o", str(out),
    ]  # fmt: skip


def library_path(cxx: str) -> Path:
    """Where this machine's build of the current source lives in the cache."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(
        b"\0".join(s.encode() for s in (SOURCE.read_text(), torch.__version__, version, cpu_flags()))
    ).hexdigest()[:16]
    return cache_root() / f"smolforge_kernels-{key}.so"


def build(cxx: str, path: Path) -> None:
    """Compile SOURCE to `path`, atomically (a finished file or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        t0 = time.perf_counter()
        log.info("building the CPU kernels for this machine (once): %s", path)
        done = subprocess.run(
            build_command(cxx, SOURCE, Path(tmp)), capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
        )
        if done.returncode != 0:
            raise RuntimeError(f"{cxx} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, path)
        log.info("built the CPU kernels in %.1f s", time.perf_counter() - t0)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def load() -> bool:
    """Load the kernels (building them first if this machine has no build); False when
    they are off or cannot be had here, with the reason logged once."""
    if not enabled():
        log.info("CPU kernels off (SMOLFORGE_CPU_KERNELS=0): torch ops")
        return False
    cxx = compiler()
    if cxx is None:
        log.warning("no C++ compiler (%s): training runs on torch ops, without the CPU kernels",
                    os.environ.get("CXX", "c++"))  # fmt: skip
        return False
    try:
        path = library_path(cxx)
        if not path.is_file():
            build(cxx, path)
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        log.warning("could not build or load the CPU kernels (%s): training runs on torch ops", e)
        return False
    return True


_paused = False


@contextlib.contextmanager
def paused():
    """Run torch ops instead of the kernels inside this block (bench/scratch.py's A/B)."""
    global _paused
    before, _paused = _paused, True
    try:
        yield
    finally:
        _paused = before


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: float32 on the CPU, kernels loaded."""
    return (
        not _paused and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors) and load()
    )
