"""The dashboard over a handful of real calls (issue #18: "the dashboard shows a day of simulated
calls"): the real server places outbound calls through the fake Twilio REST API, whose dialer
answers as people, a machine, or not at all, and takes one inbound call from the Twilio caller
simulator; the fake Realtime server plays the model. The dashboard's figures (page, JSON) are
then checked against the tickets those calls left, read back from the database."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import pytest

from callbot.adapters.store_sql import SqlTicketStore
from callbot.caller.simulator import HangUp, Silence, TwilioCaller, WaitForAssistant
from callbot.core.cost import call_cost
from callbot.core.ticket_views import TicketFilters
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL
from tests.outbound_rig import outbound_rig

ANSWERS = {
    "+15557770011": "human",
    "+15557770012": "human",
    "+15557770013": "machine",
    "+15557770014": "busy",
    "+15557770015": "no-answer",
}


async def test_the_dashboard_adds_up_the_tickets_of_a_handful_of_real_calls(tmp_path: Path) -> None:
    async with outbound_rig(tmp_path, dialer_options={"answers": ANSWERS}) as rig:
        placed = await asyncio.gather(*(rig.place(number) for number in ANSWERS))
        assert all(r.status_code == 201 for r in placed), [r.text for r in placed]
        # and an inbound call from a number whose status callback never comes: no outcome
        caller = TwilioCaller(rig.base_url, auth_token=AUTH_TOKEN, public_base_url=PUBLIC_URL)
        inbound = await caller.run([WaitForAssistant(timeout_s=10), Silence(300), HangUp()])
        assert inbound.outcome == "completed", inbound.summary()
        await rig.settle()
        store = await SqlTicketStore.open(rig.settings.database_url)
        try:
            tickets = await store.calls(TicketFilters())
        finally:
            await store.close()
        days = Counter(t.item.started_at.date().isoformat() for t in tickets)  # one, unless at midnight
        query = {"since": min(days), "until": max(days)}
        data = (await rig.http.get("/api/tickets/stats", params=query)).json()
        page = await rig.http.get("/tickets/stats", params=query)
        prices = rig.settings.price_table

    assert page.status_code == 200, page.text
    assert len(tickets) == 6
    by_number = {t.item.to_number: t for t in tickets}
    assert [by_number[n].outcome for n in ANSWERS] == [
        "talked",
        "talked",
        "voicemail_left",
        "busy",
        "no-answer",
    ]
    assert by_number[caller.to_number].outcome is None
    # the figures, by hand from the tickets
    durations = [t.item.duration_s for t in tickets if t.item.duration_s is not None]
    costs = [call_cost(t.to_record(), prices) for t in tickets]
    total_cost = sum(c.cost_usd or 0 for c in costs)
    assert total_cost > 0 and sum(1 for d in durations if d > 0) == 4  # the two talks, the machine, inbound
    assert data["calls"] == 6
    assert data["calls_per_day"] == [{"day": day, "calls": n} for day, n in sorted(days.items())]
    assert data["total_duration_s"] == pytest.approx(sum(durations), abs=0.001)
    assert data["average_duration_s"] == pytest.approx(sum(durations) / len(durations), abs=0.001)
    assert data["longest_duration_s"] == pytest.approx(max(durations), abs=0.001)
    assert data["outcome_mix"] == {
        "talked": 2, "voicemail_left": 1, "busy": 1, "no-answer": 1, "unknown": 1
    }  # fmt: skip
    assert data["outcome_mix"] == Counter(t.outcome or "unknown" for t in tickets)
    assert data["category_mix"] == Counter(t.item.category or "uncategorised" for t in tickets)
    assert data["status_mix"] == Counter(str(t.status) for t in tickets)
    # the busy and unanswered calls never reached a model: nothing to price
    unpriced = {t.item.to_number for t, c in zip(tickets, costs, strict=True) if c.cost_usd is None}
    assert unpriced == {"+15557770014", "+15557770015"}
    assert data["priced_calls"] == 4
    assert data["total_cost_usd"] == pytest.approx(total_cost, abs=1e-6)
    assert data["average_cost_usd"] == pytest.approx(total_cost / 4, abs=1e-6)
    assert data["tokens_total"] == sum(c.tokens.total for c in costs) > 0
    assert data["open_follow_ups"] == sum(1 for t in tickets if t.item.follow_up_needed)
    # the page says the same
    html = page.text
    assert "6 calls" in html
    assert f"${total_cost:.4f}" in html
    for day, n in days.items():
        assert f'<g class="bar" data-label="{day}" data-value="{n}">' in html
    outcome_svg = re.search(r'<svg [^>]*id="chart-outcome".*?</svg>', html, re.S)
    assert outcome_svg is not None
    bars = re.findall(r'<g class="bar" data-label="([^"]+)" data-value="(\d+)">', outcome_svg.group(0))
    assert {label: int(n) for label, n in bars} == {
        "talked": 2, "voicemail left": 1, "busy": 1, "no-answer": 1, "unknown": 1
    }  # fmt: skip
