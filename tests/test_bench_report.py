"""The load benchmark's verdicts and its process environment (plain functions, no processes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import load_bench


def _level(
    mode: str, calls: int, *, cpu_ms: float, late: int, lag: float, barge: float | None, errors: int = 0
) -> dict[str, Any]:
    return {
        "mode": mode,
        "calls": calls,
        "cpu_ms_per_call_s": cpu_ms,
        "server_cpu_pct": calls * cpu_ms / 10,
        "late_frames": late,
        "error_total": errors,
        "server_loop_lag_ms": {"p99": lag},
        "inbound_ms": {"p99": 1.5},
        "outbound_first_frame_ms": {"p99": 1.0},
        "barge_in_clear_ms": {"p99": barge},
        "rss_per_call_kb": 150.0,
    }


def test_verdicts_name_the_levels_each_target_holds_at() -> None:
    results = [
        _level("pcm24k", 100, cpu_ms=3.8, late=0, lag=1.3, barge=1.8),
        _level("pcm24k", 200, cpu_ms=4.1, late=0, lag=5.1, barge=2.7),
        _level("pcm24k", 300, cpu_ms=3.6, late=0, lag=40.7, barge=41.0),
        _level("pcm24k", 400, cpu_ms=2.9, late=607, lag=87.3, barge=115.7),
        _level("pcmu", 100, cpu_ms=2.7, late=0, lag=1.2, barge=1.3),
        _level("pcmu", 200, cpu_ms=2.7, late=0, lag=2.2, barge=2.8, errors=3),
        _level("pcmu", 400, cpu_ms=2.2, late=0, lag=4.4, barge=None),
    ]
    lines = load_bench.verdicts(results)
    assert lines[0].startswith("* 200 calls pcm24k on one core: PASS")
    assert lines[1].startswith("* 300 calls pcm24k on one core: FAIL")  # loop lag over 20 ms
    assert lines[2].startswith("* 400 calls pcm24k on one core: FAIL")
    carries = {line.split(",")[1].split(":")[0].strip(): line for line in lines if "one core carries" in line}
    assert carries["pcm24k"].startswith("* one core carries, pcm24k: 200 calls")
    assert "not at 300 (0 late, 0 errors, lag p99 40.7 ms), 400 (607 late" in carries["pcm24k"]
    assert carries["pcmu"].startswith("* one core carries, pcmu: 400 calls")
    assert carries["pcmu"].endswith("; not at 200 (0 late, 3 errors, lag p99 2.2 ms)")  # calls failed there
    barge = [line for line in lines if line.startswith("* barge-in")]
    assert barge[0].startswith("* barge-in clear p99 ≤ 5 ms, pcm24k: FAIL — within it at 2 of 4 levels")
    assert "over at 300 (41.00 ms), 400 (115.70 ms)" in barge[0]
    assert barge[1].startswith("* barge-in clear p99 ≤ 5 ms, pcmu: PASS — within it at 2 of 2 levels")


def test_only_the_server_runs_another_checkout() -> None:
    plain = load_bench.child_env()
    assert plain["OPENBLAS_NUM_THREADS"] == "1"
    assert plain.get("PYTHONPATH") == os.environ.get("PYTHONPATH")
    other = load_bench.child_env("/tmp/older-checkout")
    assert other["PYTHONPATH"].split(os.pathsep)[0] == "/tmp/older-checkout"
