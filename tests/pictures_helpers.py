"""A long call with several summaries, a barge-in and per-response usage, for the chart, cost and
dashboard tests (web, CLI, browser)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from callbot.adapters.store_migrate import upgrade_database
from callbot.adapters.store_sql import SqlTicketStore
from callbot.core.call_lifecycle import StatusUpdate
from callbot.core.record import (
    TRANSFERRED_PREFIX,
    CallInfo,
    CallRecord,
    ResponseUsage,
    SummaryEvent,
    ToolCallEvent,
    TranscriptEntry,
    UsageTotals,
)
from callbot.core.ticket import TicketStatus
from callbot.core.tool_config import TRANSFER

TOOL_TURN = 1
"""The turn whose caller asks something the agent looks up with a tool (an HTTP tool)."""


def long_call(sid: str, started: datetime, *, turns: int = 12) -> CallRecord:
    """`turns` caller/assistant pairs, 10 s apart; summaries at 1/3 and 2/3 of the call (the
    second rolls the first up); the assistant's fourth reply cut off by the caller; in the second
    turn a tool call (`lookup_order`), made by a response of its own before the reply.

    Self-consistent as a real call's record is (core/summary.py, core/summary_coordinator.py): a
    summary's `tokens_before` is the context size when it was requested, the total (input and
    output) of the response whose `response.done` triggered it, the last one before it; its
    `tokens_after` the total of the first response after it."""
    transcript: list[TranscriptEntry] = []
    usage: list[ResponseUsage] = []
    tools: list[ToolCallEvent] = []
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
        if n == TOOL_TURN:
            # as core/tools.py records it: started when the function call arrived (its response
            # done), ended when the HTTP tool answered; then the reply reads call and output
            usage.append(
                ResponseUsage(t + 2100, context - 60, 0, context // 3, context - 60 - context // 3, 20)
            )
            tools.append(
                ToolCallEvent(
                    f"call_{sid}", f"item_{sid}_fc", "lookup_order", '{"order_number": "4471-2290"}',
                    output='{"status": "shipped"}', outcome="ok", started_ms=t + 2100, ended_ms=t + 2500,
                )
            )  # fmt: skip
        usage.append(
            ResponseUsage(t + 2900, context, context // 2, context // 3, context - context // 3, 40, 80)
        )
    third = turns // 3
    first_at, second_at = third * 10_000 + 8000, 2 * third * 10_000 + 8000
    # the context drops after each summary: later responses read the summary (a few hundred
    # tokens of text, uncached) instead of the turns it folded (900 tokens a turn pair)
    drops = ((second_at, 2 * 900 * third - 400, 500), (first_at, 900 * third - 300, 400))
    for i, u in enumerate(usage):
        for at_ms, drop, text in drops:
            if u.at_ms > at_ms:
                read = u.input_tokens - drop
                usage[i] = ResponseUsage(u.at_ms, read, 0, text, read - text, 40, 80)
                break

    def context_at(at_ms: int, *, after: bool) -> int | None:
        """The context size a response's `response.done` reported: its input and output tokens."""
        chosen = [u for u in usage if (u.at_ms > at_ms if after else u.at_ms <= at_ms)]
        if not chosen:
            return None
        u = chosen[0] if after else chosen[-1]
        return u.input_tokens + u.output_tokens

    first = SummaryEvent(
        "s1", first_at, "Summary one.", context_at(first_at, after=False) or 0, third * 2,
        tuple(f"{sid}-{r}{n}" for n in range(third) for r in "ua"), context_at(first_at, after=True),
    )  # fmt: skip
    second = SummaryEvent(
        "s2", second_at, "Summary two, rolling up one.", context_at(second_at, after=False) or 0,
        third * 2 + 1, ("s1", *(f"{sid}-{r}{n}" for n in range(third, 2 * third) for r in "ua")),
        context_at(second_at, after=True),
    )  # fmt: skip
    return CallRecord(
        info=CallInfo(sid, "MZ" + sid, "AC1", "+15550100", "+15550199"),
        started_at=started,
        ended_at=started + timedelta(seconds=turns * 10),
        transcript=tuple(transcript),
        summaries=(first, second),
        usage=UsageTotals(
            responses=len(usage),
            input_tokens=sum(u.input_tokens for u in usage),
            output_tokens=sum(u.output_tokens for u in usage),
            last_context_tokens=usage[-1].input_tokens + usage[-1].output_tokens,
        ),
        realtime_model="gpt-realtime-1.5",
        end_reason="caller hung up",
        tool_calls=tuple(tools),
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
    waiting for its summary after a failed attempt. Each but the last gets Twilio's final status
    as a status callback brings it (`apply_status`), which gives its ticket an outcome: the second
    call was transferred (Twilio's call went on after the stream), the others talked; the last
    call's status never came, so it has none. Returns the records written."""
    await upgrade_database(url)
    store = await SqlTicketStore.open(url)
    records = []
    try:
        for n in range(calls):
            rec = long_call(f"CA{day:%m%d}{n}", day + timedelta(hours=9 + n), turns=6 + 3 * n)
            transferred = n == 1 and calls > 2
            if transferred:  # the agent's transfer_to_human at the end, as core/tools.py records it
                end_ms = len(rec.transcript) // 2 * 10_000
                transfer = ToolCallEvent(
                    f"call_{rec.info.call_sid}_t", f"item_{rec.info.call_sid}_t", TRANSFER,
                    '{"reason": "the caller asked for a person"}', output="transferred to +15550142",
                    started_ms=end_ms - 2500, ended_ms=end_ms, kind="builtin",
                )  # fmt: skip
                rec = replace(
                    rec,
                    end_reason=f"{TRANSFERRED_PREFIX} (+15550142): the caller asked for a person",
                    tool_calls=(*rec.tool_calls, transfer),
                )
            records.append(rec)
            await store.upsert_call(rec, TicketStatus.PENDING_SUMMARY)
            if n == calls - 1:
                await store.mark_summary_failed(rec.info.call_sid, "summary model timed out")
            else:
                await store.complete(
                    rec.info.call_sid, summary(f"Call {n}", ("billing", "technical")[n % 2], n % 2 == 0)
                )
                stream_s = int((rec.ended_at - rec.started_at).total_seconds()) if rec.ended_at else 0
                await store.apply_status(
                    StatusUpdate(
                        rec.info.call_sid, "completed", sequence=3,
                        duration_s=stream_s + (120 if transferred else 1),
                        from_number=rec.info.from_number, to_number=rec.info.to_number,
                    )
                )  # fmt: skip
    finally:
        await store.close()
    return records
