"""What every benchmark shares: side-by-side timing, medians, the machine, result rows.

A VM's speed drifts from second to second (another tenant, frequency), so a ratio is
only meaningful when both sides run in the same process at nearly the same time. Each
benchmark runs its sides in turn, A B B A A B ..., and reports the median of each side
and the median of the per-round ratios.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass
class Row:
    """One line of the results table."""

    name: str  # what is compared, e.g. "trainer vs bare loop"
    value: float  # the measured figure of the thing under test
    baseline: float  # the same figure of what it is compared with (nan if none)
    unit: str  # unit of value and baseline, e.g. "tok/s"
    ratio: float  # value / baseline, or the figure itself where there is no baseline
    target: str  # e.g. ">= 0.95"; "" for a figure reported without a target
    ok: bool | None  # target met (None: no target)
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)  # raw per-round figures

    def as_dict(self) -> dict:
        """For JSON: NaN (no baseline) becomes null."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


def meets(ratio: float, target: str) -> bool | None:
    """Check `ratio` against ">= x" or "<= x"; None for no target."""
    if not target:
        return None
    op, x = target.split()
    return ratio >= float(x) if op == ">=" else ratio <= float(x)


def interleave(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each side once per round; the order flips every round (A B, B A, ...) so a
    drift in machine speed hits both sides alike. Returns each side's figures."""
    names = list(sides)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            out[n].append(sides[n]())
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratio(got: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of a's figure / b's figure in the same round: the two ran next to
    each other, so a burst of load from elsewhere that hits one round is one outlier."""
    return statistics.median(x / y for x, y in zip(got[a], got[b]))


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class OtherLoad:
    """CPU time other processes used while a benchmark ran, as a share of the machine:
    /proc/stat's busy time minus this process's and its children's (0.5 on 2 cores: one
    core busy elsewhere on average). The load average would count the benchmark itself."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.ours0 = time.perf_counter(), _busy_s(), _ours_s()

    def share(self) -> float:
        wall = time.perf_counter() - self.t0
        others = (_busy_s() - self.busy0) - (_ours_s() - self.ours0)
        return max(0.0, others / (wall * (os.cpu_count() or 1)))


def _busy_s() -> float:
    """Seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _ours_s() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine() -> dict:
    """The machine the figures come from (CPU model from lscpu, cores, torch)."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    import torch

    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }
