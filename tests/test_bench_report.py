"""The load benchmark's verdicts, its process environment and the side-by-side report (plain
functions, no processes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import load_bench
import load_compare


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


# --------------------------------------------------------------------------- side by side (--peer)


def _side(target: str, *, cpu_ms: float, late: int, media: int, rss: float, rep: int = 0) -> dict[str, Any]:
    """A level result as analyse_level returns it, reduced to what the comparison reads."""
    return {
        "target": target,
        "rep": rep,
        "calls": 20,
        "call_seconds": 200.0,
        "cpu_ms_per_call_s": cpu_ms,
        "server_cpu_pct": 20 * cpu_ms / 10,
        "rss_baseline_mb": rss - 5,
        "rss_peak_mb": rss,
        "rss_per_call_kb": 256.0,
        "late_frames": late,
        "inbound_ms": {"p99": 1.0},
        "outbound_first_frame_ms": {"p99": None},
        "barge_in_clear_ms": {"p99": 2.0},
        "error_total": 0,
        "load_cpu_pct": 30.0,
        "foreign_cpu_pct_server_cpus": 1.0,
        "jitter_stalls": 0,
        "messages": {
            "media_to_callers": media,
            "marks_to_callers": 800,
            "clears_to_callers": 3,
            "media_from_callers": 10_000,
            "marks_from_callers": 800,
            "appends_to_realtime": 9_900,
            "other_to_realtime": 40,
            "deltas_from_realtime": 800,
            "realtime_errors": 0,
        },
    }


def test_side_by_side_order_alternates_per_repetition() -> None:
    targets = [("callbot", "pcm24k"), ("callbot", "pcmu"), ("peer", "twilio-sample")]
    assert load_compare.run_order(targets, 0) == targets
    assert load_compare.run_order(targets, 1) == targets[::-1]
    assert load_compare.run_order(targets, 2) == targets
    assert load_compare.run_order(["a", "b"], 3) == ["b", "a"]


def test_side_by_side_means_ranges_and_ratios_per_level_and_mode() -> None:
    results = [
        _side("callbot pcmu", cpu_ms=3.0, late=0, media=3_600, rss=60.0, rep=0),
        _side("callbot pcmu", cpu_ms=5.0, late=2, media=3_600, rss=62.0, rep=1),
        _side("twilio-sample", cpu_ms=8.0, late=0, media=800, rss=40.0, rep=0),
        _side("twilio-sample", cpu_ms=8.0, late=0, media=800, rss=42.0, rep=1),
    ]
    grouped = load_compare.group(results)
    cb = grouped[(20, "callbot pcmu")]
    assert cb["cpu_ms_per_call_s"] == {"mean": 4.0, "min": 3.0, "max": 5.0, "n": 2}
    assert cb["media_to_callers_per_call_s"]["mean"] == 18.0  # 3600 messages over 200 call-seconds
    assert cb["late_frames_per_call_min"]["mean"] == 0.3  # 1 late frame per 200 call-seconds, x60
    assert cb["other_to_realtime_per_call"]["mean"] == 2.0
    assert cb["outbound_p99_ms"] == {"mean": None, "min": None, "max": None, "n": 0}

    table = load_compare.level_table(20, 10.0, 2, "twilio-sample", ["pcmu"], grouped)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert table.startswith("### 20 concurrent calls, 10 s each: callbot vs twilio-sample (2 repetitions")
    assert rows["metric"] == "| metric | twilio-sample | callbot pcmu | pcmu / peer |"
    assert rows["server CPU ms per call-second"].endswith("| 8.00 | 4.00 (3.00-5.00) | 0.50 |")
    assert rows["server RSS peak MB"].endswith("| 41.0 (40.0-42.0) | 61.0 (60.0-62.0) | 1.49 |")
    assert rows["media messages to callers per call-second"].endswith("| 4.0 | 18.0 | 4.50 |")
    assert rows["late or missing 20 ms frames at the callers"].endswith("| 0 | 1 (0-2) | — |")  # peer 0
    assert rows["outbound: first delta → first frame p99 ms"].endswith("| — | — | — |")
    assert rows["errors (calls failed, violations, server log, ...)"].endswith("| 0 | 0 |  |")  # no ratio

    summary = load_compare.summary_table([20], "twilio-sample", ["pcmu"], grouped)
    line = summary.splitlines()[2]
    assert line.startswith("| 20 | pcmu | 4.00 | 8.00 | 0.50 | 61.0 | 41.0 | 1.49 | 256 | 256 | 1.00 |")
    [entry] = load_compare.compare_json([20], "twilio-sample", ["pcmu"], grouped)
    assert entry["ratio"]["pcmu"]["cpu_ms_per_call_s"] == 0.5
    assert entry["ratio"]["pcmu"]["late_frames"] is None
    assert "errors" not in entry["ratio"]["pcmu"]
    assert entry["peer"]["appends_per_call_s"]["mean"] == 49.5


def test_ratio_and_cells() -> None:
    assert load_compare.ratio(3.0, 2.0) == 1.5
    assert load_compare.ratio(3.0, 0.0) is None
    assert load_compare.ratio(None, 2.0) is None
    assert load_compare.cell({"mean": 2.5, "min": 2.5, "max": 2.5, "n": 3}, 1) == "2.5"  # no range: all equal
    assert load_compare.cell({"mean": 2.5, "min": 2.0, "max": 3.0, "n": 2}, 1) == "2.5 (2.0-3.0)"
    assert load_compare.cell(None, 1) == "—"


def test_a_peers_sessions_are_joined_to_calls_by_open_order() -> None:
    calls = [
        {"sid": "CA2", "start_ns": 1_000, "t0_ns": 1_500},
        {"sid": "CA1", "start_ns": 900, "t0_ns": 1_200},
        {"sid": "CA3", "start_ns": 1_100},  # its stream never opened
    ]
    sessions = [
        {"call": "", "opened_ns": 1_520, "n": "second"},
        {"call": "", "opened_ns": 100, "n": "warm-up"},  # before the level's first call started
        {"call": "", "opened_ns": 1_210, "n": "first"},
    ]
    joined = load_bench.join_by_open_order(calls, sessions)
    assert {sid: s["n"] for sid, s in joined.items()} == {"CA1": "first", "CA2": "second"}
    assert load_bench.join_by_open_order([], sessions) == {}


def test_message_counts_sum_both_sides() -> None:
    calls = [
        {"frames_received": 10, "marks_received": 4, "clears": 1, "frames_sent": 100, "marks_echoed": 4},
        {"frames_received": 6, "marks_received": 2, "clears": 0, "frames_sent": 90, "marks_echoed": 1},
    ]
    sessions = [
        {
            "appends": 95,
            "client_events": {"session.update": 1, "conversation.item.truncate": 1},
            "server_events": {"response.output_audio.delta": 7, "error": 1, "session.updated": 1},
            "errors": ["None: Audio content of 900ms is already shorter than 1200ms"],
        },
        {"append_ns": [1, 2, 3], "client_events": {"session.update": 1}, "server_events": {}},
    ]
    m = load_bench.message_counts(calls, sessions)
    assert (m["media_to_callers"], m["marks_to_callers"], m["clears_to_callers"]) == (16, 6, 1)
    assert (m["media_from_callers"], m["marks_from_callers"]) == (190, 5)
    assert m["appends_to_realtime"] == 98  # a session without the count: its timestamps
    assert m["other_to_realtime"] == 3 and m["client_events"]["session.update"] == 2
    assert (m["deltas_from_realtime"], m["events_from_realtime"], m["realtime_errors"]) == (7, 9, 1)
    assert m["realtime_error_examples"] == ["None: Audio content of 900ms is already shorter than 1200ms"]


def test_peer_log_problems_counts_errors_in_plain_text_output(tmp_path: Path) -> None:
    out, err = tmp_path / "server.stdout.log", tmp_path / "server.stderr.log"
    out.write_text(
        "Client connected\n"
        "Error in send_to_twilio: Unexpected ASGI message 'websocket.send' 1\n"
        "Error in send_to_twilio: Unexpected ASGI message 'websocket.send' 2\n"
        "Received event: error {'type': 'error', 'error': {}}\n"
    )
    err.write_text('INFO:     127.0.0.1:5 - "POST /incoming-call HTTP/1.1" 200 OK\nWARNING: slow\n')
    counts, top = load_bench.peer_log_problems([out, err, tmp_path / "missing.log"])
    assert counts == {"ERROR": 3, "WARNING": 1}
    assert top[0] == ("Error in send_to_twilio: Unexpected ASGI message 'websocket.send' N", 2)


def test_callers_learn_the_target_and_the_jitter_from_the_options() -> None:
    opts = load_bench.parse_args(["--calls", "20", "--jitter-ms", "100-300", "--jitter-every", "4"])
    assert opts.jitter == {"every_s": 4.0, "min_ms": 100, "max_ms": 300}
    assert load_bench.caller_target_spec(opts, None) == {
        "webhook_path": "/twilio/voice",
        "jitter": opts.jitter,
    }
    side = load_bench.parse_args(["--peer", "twilio-sample", "--calls", "20,40", "--opening-ms", "1500"])
    assert side.jitter is None and side.repeat == 2 and side.calls == [20, 40]
    spec = load_bench.load_peer.peer_spec("twilio-sample", peer_dir="/tmp/peer")
    # Side by side both servers get the same script: an opening silence, no greeting wait.
    assert load_bench.caller_target_spec(side, spec) == {"webhook_path": "/incoming-call", "opening_ms": 1500}
    assert load_bench.caller_target_spec(side, None) == {"webhook_path": "/twilio/voice", "opening_ms": 1500}


def test_inbound_latency_pairs_each_batched_append_with_the_last_frame_of_its_batch() -> None:
    ms = 1_000_000
    send = [20 * ms * k for k in range(29)]  # a frame every 20 ms; the first 3 dropped (session not ready)
    # Batches of 3 from frame 3, each append 1 ms after its last frame; the last two frames (27,
    # 28) are a partial batch that the bridge flushes at the caller's stop.
    appends = [send[3 + 3 * j + 2] + ms for j in range(8)] + [send[28] + ms]
    lat, agree = load_bench.inbound_latencies(send, appends, batch=3)
    assert agree and lat == [1.0] * 8  # the partial last append pairs beyond the frames: left out
    # One frame per append: unchanged.
    single = [s + 2 * ms for s in send[5:]]
    assert load_bench.inbound_latencies(send, single) == ([2.0] * 24, True)


def test_against_a_base_checkout_each_run_the_means_and_this_over_base() -> None:
    """`--base-src`: one row per figure, the mean then every run of each side, and this / base."""
    base = [_level("pcm24k", 50, cpu_ms=3.0, late=0, lag=2.0, barge=1.0) for _ in range(2)]
    base[1]["cpu_ms_per_call_s"] = 3.4
    this = [_level("pcm24k", 50, cpu_ms=3.3, late=0, lag=2.0, barge=None) for _ in range(2)]
    this[1]["cpu_ms_per_call_s"] = 3.5
    table = load_bench.base_table(50, "pcm24k", {"base": base, "this": this})
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert table.startswith("### 50 calls, pcm24k: base against this checkout")
    assert rows["server CPU ms per call-second"] == (
        "| server CPU ms per call-second | 3.20 (3.00, 3.40) | 3.40 (3.30, 3.50) | 1.062 |"
    )
    assert rows["late frames"] == "| late frames | 0 (0, 0) | 0 (0, 0) | - |"  # no ratio of zeros
    assert rows["barge-in p99 ms"].endswith("| 1.00 (1.00, 1.00) | - | - |")  # this side measured none


def test_a_base_checkout_is_compared_alone() -> None:
    opts = load_bench.parse_args(["--calls", "50", "--base-src", "/tmp/base", "--repeat", "3"])
    assert (opts.base_src, opts.repeat, opts.calls) == ("/tmp/base", 3, [50])
    for other in (["--peer", "twilio-sample"], ["--server-src", "/tmp/older"]):
        with pytest.raises(SystemExit):
            load_bench.parse_args(["--base-src", "/tmp/base", *other])
