"""Per-process resident memory and CPU time from /proc (Linux), for the benchmarks."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> Optional[float]:
    """Resident set size of one process in MiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class RssTracker:
    """Peak and a time series of RSS for named processes, sampled on demand."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.peak: dict[str, float] = {}
        self.series: dict[str, list[tuple[float, float]]] = {n: [] for n in pids}

    def sample(self, t: float) -> None:
        for name, pid in self.pids.items():
            mb = rss_mb(pid)
            if mb is not None:
                self.peak[name] = max(self.peak.get(name, 0.0), mb)
                self.series[name].append((round(t, 1), round(mb, 1)))

    def window_peak(self, name: str, t0: float, t1: float) -> Optional[float]:
        vals = [mb for t, mb in self.series[name] if t0 <= t < t1]
        return max(vals) if vals else None
