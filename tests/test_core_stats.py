"""The dashboard's figures from plain tickets: counts, mixes, durations, cost and savings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from callbot.core.cost import DEFAULT_PRICE_TABLE, call_cost, price_table
from callbot.core.record import ResponseUsage, SummaryEvent, TranscriptEntry, UsageTotals
from callbot.core.stats import NO_OUTCOME, compute_stats
from callbot.core.ticket_views import TicketListItem, TicketView

TABLE = price_table(DEFAULT_PRICE_TABLE)
DAY = datetime(2026, 12, 1, tzinfo=UTC)


def view(n: int, started: datetime, **kw: object) -> TicketView:
    usage = kw.pop("response_usage", ())
    item = TicketListItem(
        id=n, call_sid=f"CA{n}", from_number="+1", to_number="+2", started_at=started,
        ended_at=started + timedelta(seconds=float(kw.get("duration_s", 60.0))),  # type: ignore[arg-type]
        duration_s=kw.get("duration_s", 60.0),  # type: ignore[arg-type]
        status=kw.get("status", "complete"),  # type: ignore[arg-type]
        title=None, category=kw.get("category"), priority=None, sentiment=None,  # type: ignore[arg-type]
        follow_up_needed=kw.get("follow_up"), summary=None,  # type: ignore[arg-type]
        summary_attempts=kw.get("attempts", 1), last_error=kw.get("last_error"),  # type: ignore[arg-type]
        created_at=started, updated_at=started,
    )  # fmt: skip
    return TicketView(
        item=item, stream_sid="MZ", account_sid="AC", end_reason=kw.get("end_reason", "caller hung up"),  # type: ignore[arg-type]
        realtime_model="gpt-realtime-1.5", summary_model="m", usage=UsageTotals(),
        transcript=kw.get("transcript", ()), summaries=kw.get("summaries", ()),  # type: ignore[arg-type]
        response_usage=usage, outcome=kw.get("outcome"),  # type: ignore[arg-type]
    )  # fmt: skip


def test_figures_over_a_day_and_a_gap() -> None:
    caller = TranscriptEntry("u1", "user", "hi", started_ms=0, ended_ms=5000)
    summary = SummaryEvent("s1", 6000, "abcd", 900, 1, ("u1",), 300)
    usage = (
        ResponseUsage(5500, 1000, input_text_tokens=1000, output_audio_tokens=100),
        ResponseUsage(7000, 500, input_text_tokens=200, input_audio_tokens=300),
    )
    views = [
        view(1, DAY + timedelta(hours=9), category="billing", follow_up=True, duration_s=120.0,
             transcript=(caller,), summaries=(summary,), response_usage=usage, outcome="talked",
             end_reason="agent ended the call: the caller's question was answered"),
        view(2, DAY + timedelta(hours=10), category="billing", duration_s=60.0, outcome="talked"),
        view(3, DAY + timedelta(days=2), status="pending_summary", attempts=2, last_error="timeout",
             duration_s=30.0, end_reason="twilio stop"),
    ]  # fmt: skip
    stats = compute_stats(views, TABLE)
    assert stats.calls == 3
    assert stats.calls_per_day == (("2026-12-01", 2), ("2026-12-02", 0), ("2026-12-03", 1))
    assert stats.total_duration_s == 210.0
    assert stats.average_duration_s == 70.0
    assert stats.longest_duration_s == 120.0
    assert stats.status_mix == {"complete": 2, "pending_summary": 1}
    assert stats.category_mix == {"billing": 2, "uncategorised": 1}
    # the outcome, not the free-text end reason; no outcome yet (no final status): "unknown"
    assert stats.outcome_mix == {"talked": 2, NO_OUTCOME: 1} and NO_OUTCOME == "unknown"
    assert stats.open_follow_ups == 1
    assert stats.in_call_summaries == 1
    assert stats.summary_failures == 2  # ticket 3: two attempts, neither completed it
    assert stats.tickets_with_failed_summary == 1
    # ticket 1 by hand: 1000*4 + 100*64 + 200*4 + 300*32 = 20,800 micro-dollars; the second
    # response came after the summary: +50 audio tokens (5 s of caller) - 1 text token (the summary)
    assert stats.total_cost_usd == pytest.approx(0.0208)
    assert stats.tokens_saved == 49
    assert stats.cost_without_summaries_usd == pytest.approx(0.0208 + (50 * 32 - 4) / 1e6)
    assert stats.priced_calls == 3
    assert stats.average_cost_usd == pytest.approx(0.0208 / 3)
    assert stats.total_cost_usd == pytest.approx(
        sum(call_cost(v.to_record(), TABLE).cost_usd or 0 for v in views)
    )
    data = stats.to_json()
    assert data["outcome_mix"] == {"talked": 2, "unknown": 1} and "end_reason_mix" not in data
    assert data["calls_per_day"][0] == {"day": "2026-12-01", "calls": 2}
    assert data["saved_usd"] == pytest.approx(0.001596)


def test_a_date_range_fills_its_empty_days_and_nothing_is_none() -> None:
    stats = compute_stats([], TABLE, since=DAY, until=DAY + timedelta(days=3))
    assert stats.calls_per_day == (("2026-12-01", 0), ("2026-12-02", 0), ("2026-12-03", 0))
    assert stats.average_cost_usd is None and stats.average_duration_s is None
    assert compute_stats([], TABLE).calls_per_day == ()


def test_more_than_a_year_of_days_lists_only_the_days_with_calls() -> None:
    views = [view(1, DAY), view(2, DAY + timedelta(days=400))]
    stats = compute_stats(views, TABLE)
    assert stats.calls_per_day == (("2026-12-01", 1), ("2028-01-05", 1))


def test_the_outcome_mix_counts_every_outcome_of_the_lifecycle_whatever_the_end_reason() -> None:
    """Outbound and unanswered calls: the mix is the tickets' outcomes (call_lifecycle.call_outcome),
    one bar each, while the end reasons (free text with the agent's reason in it) are not counted."""
    outcomes = ["talked", "busy", "no-answer", "voicemail_left", "transferred", "talked", None, "machine"]
    views = [
        view(n, DAY + timedelta(minutes=n), outcome=o, end_reason=f"agent ended the call: reason {n}")
        for n, o in enumerate(outcomes, 1)
    ]
    stats = compute_stats(views, TABLE)
    assert stats.outcome_mix == {
        "talked": 2, "busy": 1, "no-answer": 1, "voicemail_left": 1, "transferred": 1, "unknown": 1,
        "machine": 1,
    }  # fmt: skip
    assert next(iter(stats.outcome_mix)) == "talked"  # most common first
    assert sum(stats.outcome_mix.values()) == stats.calls == len(outcomes)


def test_a_transferred_tickets_summary_is_no_failure() -> None:
    """Transferred is a final status like complete: its one summary attempt succeeded."""
    views = [
        view(1, DAY, status="transferred", attempts=1, outcome="transferred"),
        view(2, DAY, status="transferred", attempts=3, outcome="transferred"),
        view(3, DAY, status="complete", attempts=1),
    ]
    stats = compute_stats(views, TABLE)
    assert stats.summary_failures == 2  # only ticket 2's two attempts before the one that worked
    assert stats.status_mix == {"transferred": 2, "complete": 1}
