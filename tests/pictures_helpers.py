"""A long call with several summaries, a barge-in and per-response usage, for the chart, cost and
dashboard tests (web, CLI, browser)."""

from __future__ import annotations

from datetime import datetime, timedelta

from callbot.adapters.store_migrate import upgrade_database
from callbot.adapters.store_sql import SqlTicketStore
from callbot.core.record import (
    CallInfo,
    CallRecord,
    ResponseUsage,
    SummaryEvent,
    TranscriptEntry,
    UsageTotals,
)
from callbot.core.ticket import TicketStatus


def long_call(sid: str, started: datetime, *, turns: int = 12) -> CallRecord:
    """`turns` caller/assistant pairs, 10 s apart; summaries at 1/3 and 2/3 of the call (the
    second rolls the first up); the assistant's fourth reply cut off by the caller."""
    transcript: list[TranscriptEntry] = []
    usage: list[ResponseUsage] = []
    context = 600
    for n in range(turns):
        t = n * 10_000
        transcript.append(TranscriptEntry(f"{sid}-u{n}", "user", f"Caller line {n}.", at_ms=t + 2500,
                                          started_ms=t, ended_ms=t + 2000))  # fmt: skip
        cut = n == 3
        transcript.append(
            TranscriptEntry(
                f"{sid}-a{n}", "assistant", f"Reply number {n} to the caller.", at_ms=t + 2600,
                started_ms=t + 3000, ended_ms=t + (4200 if cut else 7000), interrupted=cut,
                heard_ms=1200 if cut else None,
            )
        )  # fmt: skip
        context += 900
        usage.append(
            ResponseUsage(t + 2900, context, context // 2, context // 3, context - context // 3, 40, 80)
        )
    third = turns // 3
    first = SummaryEvent(
        "s1", third * 10_000 + 8000, "Summary one.", usage[third].input_tokens, third * 2,
        tuple(f"{sid}-{r}{n}" for n in range(third) for r in "ua"), 900,
    )  # fmt: skip
    second = SummaryEvent(
        "s2", 2 * third * 10_000 + 8000, "Summary two, rolling up one.", usage[2 * third].input_tokens,
        third * 2 + 1, ("s1", *(f"{sid}-{r}{n}" for n in range(third, 2 * third) for r in "ua")), 1100,
    )  # fmt: skip
    # the context drops after each summary: later responses read less
    for i, u in enumerate(usage):
        if u.at_ms > second.at_ms:
            usage[i] = ResponseUsage(u.at_ms, u.input_tokens - 6000, 0, 500, u.input_tokens - 6500, 40, 80)
        elif u.at_ms > first.at_ms:
            usage[i] = ResponseUsage(u.at_ms, u.input_tokens - 3000, 0, 400, u.input_tokens - 3400, 40, 80)
    return CallRecord(
        info=CallInfo(sid, "MZ" + sid, "AC1", "+15550100", "+15550199"),
        started_at=started,
        ended_at=started + timedelta(seconds=turns * 10),
        transcript=tuple(transcript),
        summaries=(first, second),
        usage=UsageTotals(responses=len(usage), input_tokens=sum(u.input_tokens for u in usage)),
        realtime_model="gpt-realtime-1.5",
        end_reason="caller hung up",
        response_usage=tuple(usage),
    )


def summary(title: str, category: str, follow_up: bool) -> dict[str, object]:
    return {
        "title": title, "summary": f"About {title}.", "caller_request": "help", "outcome": "done",
        "category": category, "priority": "normal", "sentiment": "neutral", "action_items": [],
        "facts": [], "follow_up_needed": follow_up, "language": "en",
    }  # fmt: skip


async def seed_day(url: str, day: datetime, calls: int = 6) -> list[CallRecord]:
    """A day of simulated calls: long calls, every other one with a follow-up, one still
    waiting for its summary after a failed attempt. Returns the records written."""
    await upgrade_database(url)
    store = await SqlTicketStore.open(url)
    records = []
    try:
        for n in range(calls):
            rec = long_call(f"CA{day:%m%d}{n}", day + timedelta(hours=9 + n), turns=6 + 3 * n)
            records.append(rec)
            await store.upsert_call(rec, TicketStatus.PENDING_SUMMARY)
            if n == calls - 1:
                await store.mark_summary_failed(rec.info.call_sid, "summary model timed out")
            else:
                await store.complete(
                    rec.info.call_sid, summary(f"Call {n}", ("billing", "technical")[n % 2], n % 2 == 0)
                )
    finally:
        await store.close()
    return records
