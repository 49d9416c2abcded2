"""The dashboard's figures over many calls, computed from the tickets the store returns.

Plain aggregation (no database functions), so SQLite and PostgreSQL give the same answer and the
figures are tested without a database. Costs come from `callbot.core.cost`, per call, then summed.

The outcome mix counts each ticket's call outcome (`core/call_lifecycle.call_outcome`: talked,
busy, no-answer, voicemail_left, transferred, ...), not its end reason, which is free text
("agent ended the call: <reason>"). A ticket gets its outcome once Twilio's final status is
known; one without (no status callback for the number, or the call is still going) counts
under `NO_OUTCOME`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from callbot.core.cost import Prices, call_cost
from callbot.core.ticket import FINAL_STATUSES
from callbot.core.ticket_views import TicketView

NO_OUTCOME = "unknown"
"""The outcome mix's label for a ticket without an outcome (Twilio's final status never came)."""

MAX_FILLED_DAYS = 366
"""Days without calls are shown as zeros between the first and last day, up to a year."""


@dataclass(frozen=True, slots=True)
class CallStats:
    since: datetime | None
    until: datetime | None
    calls: int = 0
    calls_per_day: tuple[tuple[str, int], ...] = ()
    total_duration_s: float = 0.0
    average_duration_s: float | None = None
    longest_duration_s: float | None = None
    status_mix: dict[str, int] = field(default_factory=dict)
    category_mix: dict[str, int] = field(default_factory=dict)
    outcome_mix: dict[str, int] = field(default_factory=dict)
    open_follow_ups: int = 0
    priced_calls: int = 0
    total_cost_usd: float = 0.0
    average_cost_usd: float | None = None
    cost_without_summaries_usd: float = 0.0
    tokens_total: int = 0
    tokens_saved: int = 0
    in_call_summaries: int = 0
    summary_failures: int = 0
    tickets_with_failed_summary: int = 0

    @property
    def saved_usd(self) -> float:
        return self.cost_without_summaries_usd - self.total_cost_usd

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "calls": self.calls,
            "calls_per_day": [{"day": day, "calls": n} for day, n in self.calls_per_day],
            "total_duration_s": round(self.total_duration_s, 3),
            "average_duration_s": _round(self.average_duration_s, 3),
            "longest_duration_s": _round(self.longest_duration_s, 3),
            "status_mix": self.status_mix,
            "category_mix": self.category_mix,
            "outcome_mix": self.outcome_mix,
            "open_follow_ups": self.open_follow_ups,
            "priced_calls": self.priced_calls,
            "total_cost_usd": round(self.total_cost_usd, 6),
            "average_cost_usd": _round(self.average_cost_usd, 6),
            "cost_without_summaries_usd": round(self.cost_without_summaries_usd, 6),
            "saved_usd": round(self.saved_usd, 6),
            "tokens_total": self.tokens_total,
            "tokens_saved": self.tokens_saved,
            "in_call_summaries": self.in_call_summaries,
            "summary_failures": self.summary_failures,
            "tickets_with_failed_summary": self.tickets_with_failed_summary,
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _days(
    counts: Mapping[date, int], since: datetime | None, until: datetime | None
) -> list[tuple[str, int]]:
    if not counts and (since is None or until is None):
        return []
    first = since.date() if since else min(counts)
    # `until` is exclusive: a bound at midnight ends the day before
    last = (until - timedelta(microseconds=1)).date() if until else max(counts)
    if counts:
        first, last = min(first, min(counts)), max(last, max(counts))
    if (last - first).days >= MAX_FILLED_DAYS:
        return [(d.isoformat(), n) for d, n in sorted(counts.items())]
    days = []
    day = first
    while day <= last:
        days.append((day.isoformat(), counts.get(day, 0)))
        day += timedelta(days=1)
    return days


def compute_stats(
    views: Iterable[TicketView],
    table: Mapping[str, Prices],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> CallStats:
    """The figures of the calls in `views` (already selected by date range)."""
    per_day: Counter[date] = Counter()
    status: Counter[str] = Counter()
    category: Counter[str] = Counter()
    outcome: Counter[str] = Counter()
    durations: list[float] = []
    calls = follow_ups = priced = summaries = failures = failed_tickets = 0
    cost = without = 0.0
    tokens_total = tokens_saved = 0
    for view in views:
        item = view.item
        calls += 1
        per_day[item.started_at.date()] += 1
        status[item.status] += 1
        category[item.category or "uncategorised"] += 1
        outcome[view.outcome or NO_OUTCOME] += 1
        if item.duration_s is not None:
            durations.append(item.duration_s)
        if item.follow_up_needed:
            follow_ups += 1
        summaries += len(view.summaries)
        # every attempt that did not complete the ticket failed (a transferred ticket is complete too)
        failures += max(0, item.summary_attempts - (1 if item.status in FINAL_STATUSES else 0))
        if item.last_error is not None:
            failed_tickets += 1
        figures = call_cost(view.to_record(), table)
        tokens_total += figures.tokens.total
        tokens_saved += figures.tokens_saved
        if figures.cost_usd is not None and figures.cost_without_summaries_usd is not None:
            priced += 1
            cost += figures.cost_usd
            without += figures.cost_without_summaries_usd
    return CallStats(
        since=since,
        until=until,
        calls=calls,
        calls_per_day=tuple(_days(per_day, since, until)),
        total_duration_s=sum(durations),
        average_duration_s=sum(durations) / len(durations) if durations else None,
        longest_duration_s=max(durations) if durations else None,
        status_mix=dict(status.most_common()),
        category_mix=dict(category.most_common()),
        outcome_mix=dict(outcome.most_common()),
        open_follow_ups=follow_ups,
        priced_calls=priced,
        total_cost_usd=cost,
        average_cost_usd=cost / priced if priced else None,
        cost_without_summaries_usd=without,
        tokens_total=tokens_total,
        tokens_saved=tokens_saved,
        in_call_summaries=summaries,
        summary_failures=failures,
        tickets_with_failed_summary=failed_tickets,
    )
