"""Measuring processes: memory as PSS from /proc/PID/smaps_rollup, CPU time, and summaries.

PSS (proportional set size) charges each shared page to the processes sharing it in equal parts,
so the PSS of a set of processes adds up to the memory they really take together: forked workers
that share most of their pages with their parent are not counted again and again, as RSS would.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..apache_airflow.airflow_side import procgroup

# PSS is read from /proc/PID/smaps_rollup: this is the one module that reads /proc (Linux); elsewhere
# (macOS) RSS stands in
PROC = Path("/proc")


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """``Field: N kB`` lines of smaps_rollup -> {field: kB}."""
    fields = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            fields[name.strip()] = int(parts[0])
    return fields


def pss_kib(pid: int, proc: Path = PROC) -> int | None:
    """The PSS of one process in KiB, or None (gone, or a kernel without smaps_rollup)."""
    try:
        return parse_smaps_rollup((proc / str(pid) / "smaps_rollup").read_text()).get("Pss")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def pss_mib(pids: Iterable[int], proc: Path = PROC) -> float:
    """The summed PSS of ``pids`` in MiB (processes that are gone count 0).

    Off Linux (macOS has no /proc), RSS stands in: it counts shared pages once per process.
    """
    if not sys.platform.startswith("linux") or not proc.is_dir():
        return sum(_rss(pid) for pid in set(pids)) / (1 << 20)
    return sum(pss_kib(pid, proc) or 0 for pid in set(pids)) / 1024


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def group(pgid: int) -> list[int]:
    """The live processes of a process group (a supervised component and everything it started)."""
    return [proc.pid for proc in procgroup.members(pgid)]


def tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return []


def cpu_seconds(pids: Iterable[int], reaped: bool = False) -> float:
    """User + system CPU time spent so far by ``pids``; with ``reaped``, also by the children they have
    already waited for (a DAG parser's per-file processes come and go between two readings)."""
    total = 0.0
    for pid in set(pids):
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
            if reaped:
                total += times.children_user + times.children_system
    return total


def listener(port: int) -> int | None:
    """The PID listening on a TCP port of this machine (the postmaster, say), or None."""
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


@dataclass(frozen=True)
class Summary:
    """min / median / max of repeated measurements."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Summary:
        return cls(tuple(float(v) for v in values if v is not None))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def low(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def high(self) -> float | None:
        return max(self.values) if self.values else None

    def ratio_to(self, baseline: Summary) -> float | None:
        """Median over the baseline's median."""
        if self.median is None or not baseline.median:
            return None
        return self.median / baseline.median
