"""Prometheus metrics for one app: calls, their outcomes, bridge latency, summaries, tokens.

Every app owns its registry (no process-global metric state), so tests and several apps in one
process never see each other's numbers. The hot-path histograms are sampled: observing every
20 ms frame of hundreds of calls would cost more than the bridge itself.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from callbot.core.call import CallStats

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1)
LATENCY_SAMPLE_EVERY = 25
"""Observe one frame in this many on each direction of each call."""


def outcome_of(end_reason: str) -> str:
    """A small, fixed label set for `callbot_calls_total{outcome}` (reasons themselves are free text)."""
    reason = end_reason.lower()
    if reason.startswith("caller hung up") or reason.startswith("twilio websocket closed"):
        return "caller_hung_up"
    if "shutting down" in reason:
        return "shutdown"
    if "realtime" in reason:
        return "upstream_failure"
    if "internal error" in reason:
        return "error"
    if "silent" in reason:
        return "twilio_silent"
    return "other"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.active_calls = Gauge("callbot_active_calls", "Calls in progress", registry=r)
        self.calls = Counter("callbot_calls", "Finished calls by outcome", ["outcome"], registry=r)
        self.rejected_calls = Counter("callbot_rejected_calls", "Calls turned away", ["reason"], registry=r)
        self.call_duration = Histogram(
            "callbot_call_duration_seconds",
            "Call duration",
            buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
            registry=r,
        )
        self.inbound_latency = Histogram(
            "callbot_bridge_inbound_latency_seconds",
            "Twilio media frame received -> input_audio_buffer.append sent (sampled)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outbound_latency = Histogram(
            "callbot_bridge_outbound_latency_seconds",
            "Realtime audio delta received -> its first Twilio frame sent (sampled)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "callbot_event_loop_lag_seconds",
            "How late the 20 ms pacer tick ran",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=r,
        )
        self.summaries = Counter("callbot_summaries", "In-call summaries inserted", registry=r)
        self.tokens = Counter("callbot_tokens", "Realtime tokens used", ["direction"], registry=r)
        self.reconnects = Counter("callbot_realtime_reconnects", "Realtime reconnect attempts", registry=r)
        self.rollovers = Counter(
            "callbot_realtime_rollovers", "Sessions rolled over before the limit", registry=r
        )
        self.barge_ins = Counter("callbot_barge_ins", "Caller interruptions", registry=r)
        self.errors = Counter("callbot_errors", "Problems by kind", ["kind"], registry=r)
        self.fast_path = Gauge(
            "callbot_fast_path",
            "1 if this fast path past a library's public API runs, 0 if its probe failed or it is off",
            ["path"],
            registry=r,
        )

    def call_finished(
        self, end_reason: str, duration_s: float, stats: CallStats, summaries: int, tokens: tuple[int, int]
    ) -> None:
        self.calls.labels(outcome_of(end_reason)).inc()
        self.call_duration.observe(duration_s)
        self.summaries.inc(summaries)
        self.tokens.labels("input").inc(tokens[0])
        self.tokens.labels("output").inc(tokens[1])
        self.reconnects.inc(stats.reconnects)
        self.rollovers.inc(stats.rollovers)
        self.barge_ins.inc(stats.barge_ins)
        if stats.invalid_twilio:
            self.errors.labels("invalid_twilio_message").inc(stats.invalid_twilio)
        if stats.realtime_errors:
            self.errors.labels("realtime_error_event").inc(stats.realtime_errors)
        if outcome_of(end_reason) == "error":
            self.errors.labels("internal").inc()
