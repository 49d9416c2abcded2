"""Side-by-side report of load_bench.py `--peer`: callbot and a peer server under the same load.

Plain functions over the per-level results `load_bench.analyse_level` returns (each tagged with
its `target` and repetition `rep`), no processes: the run order of the targets, the metrics
compared, their mean and range over the repetitions, the callbot/peer ratio per level and mode,
and the Markdown tables and JSON summary built from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def run_order(targets: Sequence[T], rep: int) -> list[T]:
    """The order the targets run in at repetition `rep` (0-based): as given, then reversed, and
    so on, so that neither side always runs first (a warm page cache, a neighbour's burst)."""
    return list(targets) if rep % 2 == 0 else list(reversed(targets))


def callbot_target(mode: str) -> str:
    return f"callbot {mode}"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    digits: int = 2
    ratio: bool = True
    """Whether the callbot/peer ratio of this metric means anything (not for error counts)."""
    short: str = ""
    """Column heading in the summary table."""


METRICS: list[Metric] = [
    Metric("cpu_ms_per_call_s", "server CPU ms per call-second", short="CPU ms/call-s"),
    Metric("server_cpu_pct", "server CPU % of one core (steady window)", 1),
    Metric("idle_cpu_ms_per_s", "server CPU ms per second idle (no call, after the warm-up)", 2),
    Metric("rss_baseline_mb", "server RSS baseline MB (after warm-up)", 1),
    Metric("rss_peak_mb", "server RSS peak MB", 1, short="RSS peak MB"),
    Metric("rss_per_call_kb", "server RSS per call KB ((peak − baseline) / calls)", 0, short="RSS/call KB"),
    Metric("late_frames", "late or missing 20 ms frames at the callers", 0, short="late frames"),
    Metric("late_frames_per_call_min", "late frames per call-minute", 2),
    Metric("late_frames_in_reply_start", "of which in the first 300 ms of a reply", 0, ratio=False),
    Metric(
        "media_to_callers_per_call_s",
        "media messages to callers per call-second",
        1,
        short="media out/call-s",
    ),
    Metric("marks_to_callers_per_call_s", "marks to callers per call-second", 1, short="marks out/call-s"),
    Metric("clears_to_callers", "clears to callers", 0),
    Metric("media_from_callers_per_call_s", "media messages from callers per call-second", 1),
    Metric("marks_from_callers_per_call_s", "marks echoed by callers per call-second", 1),
    Metric("appends_per_call_s", "appends to Realtime per call-second", 1, short="appends/call-s"),
    Metric("other_to_realtime_per_call", "other client events to Realtime per call", 1),
    Metric("deltas_per_call_s", "audio deltas from Realtime per call-second", 1),
    Metric("inbound_p99_ms", "inbound: frame → append p99 ms"),
    Metric("outbound_p99_ms", "outbound: first delta → first frame p99 ms"),
    Metric("barge_p99_ms", "barge-in: speech_started → clear p99 ms"),
    Metric("jitter_stalls", "network-jitter stalls of the callers' reading", 0, ratio=False),
    Metric("realtime_errors", "error events the fake Realtime sent", 0, ratio=False),
    Metric("errors", "errors (calls failed, violations, server log, ...)", 0, ratio=False),
    Metric("load_cpu_pct", "load side CPU % (fake + callers)", 0, ratio=False),
    Metric("foreign_cpu_pct", "other processes' CPU % on the server CPU", 0, ratio=False),
]

SUMMARY_KEYS = [
    "cpu_ms_per_call_s",
    "rss_peak_mb",
    "rss_per_call_kb",
    "late_frames",
    "media_to_callers_per_call_s",
    "marks_to_callers_per_call_s",
    "appends_per_call_s",
]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def flatten(r: dict[str, Any]) -> dict[str, float | None]:
    """The compared metrics of one level result (None where the target cannot say)."""
    call_s = _num(r.get("call_seconds")) or 0.0
    calls = _num(r.get("calls")) or 0.0
    msgs: dict[str, Any] = r.get("messages") or {}

    def per_call_s(key: str) -> float | None:
        v = _num(msgs.get(key))
        return v / call_s if v is not None and call_s else None

    late = _num(r.get("late_frames"))
    other = _num(msgs.get("other_to_realtime"))
    return {
        "cpu_ms_per_call_s": _num(r.get("cpu_ms_per_call_s")),
        "server_cpu_pct": _num(r.get("server_cpu_pct")),
        "idle_cpu_ms_per_s": _num(r.get("idle_cpu_ms_per_s")),
        "rss_baseline_mb": _num(r.get("rss_baseline_mb")),
        "rss_peak_mb": _num(r.get("rss_peak_mb")),
        "rss_per_call_kb": _num(r.get("rss_per_call_kb")),
        "late_frames": late,
        "late_frames_per_call_min": late * 60 / call_s if late is not None and call_s else None,
        "late_frames_in_reply_start": _num(r.get("late_frames_in_reply_start")),
        "media_to_callers_per_call_s": per_call_s("media_to_callers"),
        "marks_to_callers_per_call_s": per_call_s("marks_to_callers"),
        "clears_to_callers": _num(msgs.get("clears_to_callers")),
        "media_from_callers_per_call_s": per_call_s("media_from_callers"),
        "marks_from_callers_per_call_s": per_call_s("marks_from_callers"),
        "appends_per_call_s": per_call_s("appends_to_realtime"),
        "other_to_realtime_per_call": other / calls if other is not None and calls else None,
        "deltas_per_call_s": per_call_s("deltas_from_realtime"),
        "inbound_p99_ms": _num((r.get("inbound_ms") or {}).get("p99")),
        "outbound_p99_ms": _num((r.get("outbound_first_frame_ms") or {}).get("p99")),
        "barge_p99_ms": _num((r.get("barge_in_clear_ms") or {}).get("p99")),
        "jitter_stalls": _num(r.get("jitter_stalls")),
        "realtime_errors": _num(msgs.get("realtime_errors")),
        "errors": _num(r.get("error_total")),
        "load_cpu_pct": _num(r.get("load_cpu_pct")),
        "foreign_cpu_pct": _num(r.get("foreign_cpu_pct_server_cpus")),
    }


def aggregate(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, min and max over the repetitions that measured it (n of them)."""
    got = [v for v in values if v is not None]
    if not got:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": sum(got) / len(got), "min": min(got), "max": max(got), "n": len(got)}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def group(results: Sequence[dict[str, Any]]) -> dict[tuple[int, str], dict[str, dict[str, Any]]]:
    """(calls, target) -> metric -> aggregate over the repetitions."""
    flat: dict[tuple[int, str], list[dict[str, float | None]]] = {}
    for r in results:
        flat.setdefault((int(r["calls"]), str(r["target"])), []).append(flatten(r))
    return {
        key: {m.key: aggregate([row[m.key] for row in rows]) for m in METRICS} for key, rows in flat.items()
    }


def _fmt(v: float | int | None, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def cell(agg: dict[str, Any] | None, digits: int) -> str:
    """'4.37' for one repetition, '4.37 (4.30-4.41)' for several; '—' when not measured."""
    if not agg or agg.get("mean") is None:
        return "—"
    text = _fmt(agg["mean"], digits)
    if (agg.get("n") or 0) > 1 and agg["min"] != agg["max"]:
        text += f" ({_fmt(agg['min'], digits)}-{_fmt(agg['max'], digits)})"
    return text


def ratio_cell(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    r = ratio((a or {}).get("mean"), (b or {}).get("mean"))
    return "—" if r is None else f"{r:.2f}"


def level_table(
    n: int,
    seconds: float,
    repeat: int,
    peer: str,
    modes: Sequence[str],
    grouped: dict[tuple[int, str], dict[str, dict[str, Any]]],
) -> str:
    """One level: the peer, then per mode callbot and callbot/peer (means over the repetitions)."""
    head = ["metric", peer]
    for mode in modes:
        head += [callbot_target(mode), f"{mode} / peer"]
    lines = [
        f"### {n} concurrent calls, {seconds:g} s each: callbot vs {peer}"
        f" ({repeat} repetition{'s' if repeat != 1 else ''}, mean (min-max))",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    p = grouped.get((n, peer), {})
    for m in METRICS:
        row = [m.label, cell(p.get(m.key), m.digits)]
        for mode in modes:
            c = grouped.get((n, callbot_target(mode)), {})
            row += [cell(c.get(m.key), m.digits), ratio_cell(c.get(m.key), p.get(m.key)) if m.ratio else ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def summary_table(
    levels: Sequence[int],
    peer: str,
    modes: Sequence[str],
    grouped: dict[tuple[int, str], dict[str, dict[str, Any]]],
) -> str:
    """Every level and mode on one line: callbot, peer and their ratio for the main metrics."""
    metrics = {m.key: m for m in METRICS}
    head = ["calls", "mode"]
    for key in SUMMARY_KEYS:
        short = metrics[key].short or metrics[key].label
        head += [f"{short}: callbot", peer, "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|---:|---|" + "---:|" * (len(head) - 2)]
    for n in levels:
        p = grouped.get((n, peer), {})
        for mode in modes:
            c = grouped.get((n, callbot_target(mode)), {})
            if not c and not p:
                continue
            row = [str(n), mode]
            for key in SUMMARY_KEYS:
                d = metrics[key].digits
                row += [
                    _fmt((c.get(key) or {}).get("mean"), d),
                    _fmt((p.get(key) or {}).get("mean"), d),
                    ratio_cell(c.get(key), p.get(key)),
                ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def compare_json(
    levels: Sequence[int],
    peer: str,
    modes: Sequence[str],
    grouped: dict[tuple[int, str], dict[str, dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Per level: each target's aggregates and, per mode, the callbot/peer ratio of the means."""
    out = []
    for n in levels:
        p = grouped.get((n, peer), {})
        entry: dict[str, Any] = {"calls": n, "peer": p, "callbot": {}, "ratio": {}}
        for mode in modes:
            c = grouped.get((n, callbot_target(mode)), {})
            entry["callbot"][mode] = c
            entry["ratio"][mode] = {
                m.key: ratio((c.get(m.key) or {}).get("mean"), (p.get(m.key) or {}).get("mean"))
                for m in METRICS
                if m.ratio
            }
        out.append(entry)
    return out
