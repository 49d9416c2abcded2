"""Helpers shared by the load benchmark's processes (see bench/load_bench.py and bench/README.md).

Nothing here runs on the bridge's code path: CPU pinning, /proc readers, an event-loop lag
monitor and percentile maths, used by the server launcher, the fake Realtime launcher, the
caller processes and the orchestrator alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import os
import sys
import time
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

if importlib.util.find_spec("callbot") is None:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

AUTH_TOKEN = "load-bench-auth-token-0123456789abcdef"
PUBLIC_URL = "https://bot.load-bench.test"
CALL_QUERY = "bench_call"
"""Query parameter the bench connector adds to the Realtime URL so the fake knows the call."""


def pin(cpus: Iterable[int] | None) -> None:
    """Pin this process (all its threads created later) to `cpus`; no-op when None/empty."""
    wanted = set(cpus or ())
    if wanted:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, wanted)


def parse_cpus(text: str) -> set[int]:
    """'0' -> {0}; '0,1' -> {0, 1}; '' -> set() (no pinning)."""
    return {int(part) for part in text.split(",") if part.strip()}


def parse_ms_range(text: str) -> tuple[int, int]:
    """'100-300' -> (100, 300); '200' -> (200, 200). ValueError unless 0 < MIN <= MAX."""
    lo, sep, hi = text.partition("-")
    low = int(lo)
    high = int(hi) if sep else low
    if not 0 < low <= high:
        raise ValueError(f"not a range of positive milliseconds: {text!r}")
    return low, high


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_sched_ns(pid: int) -> int:
    """CPU time of a process's live threads in ns, from /proc/<pid>/task/*/schedstat (no 10 ms
    clock-tick granularity, unlike /proc/<pid>/stat; threads that already exited are missing)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def cpu_busy_s() -> dict[str, float]:
    """Per CPU line of /proc/stat: busy seconds ("cpu0"), of which irq+softirq ("cpu0:irq"); steal."""
    out: dict[str, float] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *vals = line.split()
            v = [int(x) for x in vals]
            # user, nice, system, irq, softirq: a process's own stime can include softirq work done
            # in its context (loopback TCP), so leaving irq out would make "other processes" negative
            out[name] = (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK
            out[name + ":irq"] = (v[5] + v[6]) / CLK_TCK  # irq + softirq (loopback TCP work lands here)
            out[name + ":steal"] = v[7] / CLK_TCK  # time the hypervisor gave to other guests
    return out


def proc_rss_bytes(pid: int) -> int:
    """Resident set size now, from /proc/<pid>/statm."""
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def proc_status_kb(pid: int, key: str) -> int:
    """A kB field of /proc/<pid>/status, e.g. VmHWM (peak RSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class LagMonitor:
    """Measures event-loop lag: a task sleeps `interval_s` and records how late it woke.

    Samples are (monotonic_ns at wake-up, lag in microseconds), kept in flat arrays. With
    uvloop the timer has 1 ms granularity, so a lag of up to ~1 ms is the timer, not the loop.
    """

    def __init__(self, interval_s: float = 0.010) -> None:
        self.interval_s = interval_s
        self.t_ns = array("q")
        self.lag_us = array("q")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lag-monitor")

    async def _run(self) -> None:
        interval_ns = int(self.interval_s * 1e9)
        while True:
            before = time.monotonic_ns()
            await asyncio.sleep(self.interval_s)
            now = time.monotonic_ns()
            self.t_ns.append(now)
            self.lag_us.append(max(0, (now - before - interval_ns) // 1000))

    def since(self, t0_ns: int = 0, t1_ns: int | None = None) -> list[int]:
        """Lag samples (µs) taken in [t0_ns, t1_ns]."""
        end = t1_ns if t1_ns is not None else 1 << 62
        return [lag for t, lag in zip(self.t_ns, self.lag_us, strict=True) if t0_ns <= t <= end]

    def export(self) -> dict[str, list[int]]:
        return {"t_ns": list(self.t_ns), "lag_us": list(self.lag_us)}

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def window(export: dict[str, list[int]], t0_ns: int, t1_ns: int) -> list[int]:
    """Lag samples (µs) of an exported LagMonitor inside [t0_ns, t1_ns]."""
    return [lag for t, lag in zip(export["t_ns"], export["lag_us"], strict=True) if t0_ns <= t <= t1_ns]


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100, nearest-rank); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def dist(values: Sequence[float]) -> dict[str, Any]:
    """n, p50, p99, max of a sample (same units as the values)."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99), "max": float(max(values))}


def run_loop(main: Any, *, use_uvloop: bool = True) -> Any:
    """asyncio.run(main) on uvloop when installed and wanted (uvicorn's loop='auto' picks uvloop too)."""
    factory = None
    if use_uvloop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
