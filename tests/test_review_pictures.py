"""The ticket page's context chart and cost, and the dashboard, through the review router."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from callbot.adapters.store_sql import SqlTicketStore
from callbot.core.charts import call_marks
from callbot.core.cost import DEFAULT_PRICE_TABLE, call_cost, price_table
from callbot.core.record import CallRecord
from callbot.web.review import review_router
from tests.pictures_helpers import seed_day

DAY = datetime(2026, 12, 1, tzinfo=UTC)
AUTH = ("admin", "pw")
TABLE = price_table(DEFAULT_PRICE_TABLE)
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
async def seeded(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, list[CallRecord]]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 't.db'}"
    records = await seed_day(url, DAY)
    store = await SqlTicketStore.open(url)
    app = FastAPI()
    app.include_router(review_router(lambda: store, *AUTH, prices=TABLE, summary_trigger_tokens=5000))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", auth=AUTH) as c:
        yield c, records
    await store.close()


def chart(html: str) -> ET.Element:
    svg = re.search(
        r'<svg xmlns="http://www.w3.org/2000/svg" class="chart context-chart".*?</svg>', html, re.S
    )
    assert svg is not None
    return ET.fromstring(svg.group(0))


async def test_the_ticket_page_charts_every_response_summary_barge_in_and_tool_call(seeded) -> None:  # type: ignore[no-untyped-def]
    client, records = seeded
    rec = records[3]  # 15 turns: two summaries, one barge-in, one tool call
    response = await client.get("/tickets/4")
    assert response.status_code == 200
    assert "script" not in response.headers["content-security-policy"]
    root = chart(response.text)
    points = [
        (int(c.get("data-at-ms")), int(c.get("data-tokens")))
        for c in root.iter(f"{SVG}circle")
        if c.get("class") == "point"
    ]
    assert points == [(u.at_ms, u.input_tokens) for u in rec.response_usage]
    marks = [
        (g.get("data-kind"), int(g.get("data-at-ms"))) for g in root.iter(f"{SVG}g") if g.get("data-kind")
    ]
    expected = [(m.kind, m.at_ms) for m in call_marks(rec)]
    assert marks == expected
    assert sorted(k for k, _ in marks) == ["barge_in", "summary", "summary", "tool"]
    # each mark drawn at its time: its line's x is the time's place on the call-time axis
    end_ms, width = int(root.get("data-end-ms")), int(root.get("width"))
    drawn = {
        (g.get("data-kind"), int(g.get("data-at-ms"))): float(g.find(f"{SVG}line").get("x1"))
        for g in root.iter(f"{SVG}g")
        if g.get("data-kind")
    }
    (tool,) = rec.tool_calls
    (barge_in,) = [e for e in rec.transcript if e.interrupted]
    times = {
        ("tool", tool.started_ms),
        ("barge_in", barge_in.started_ms + barge_in.heard_ms),
        *(("summary", s.at_ms) for s in rec.summaries),
    }
    assert set(drawn) == times
    for (_, at_ms), x in drawn.items():
        assert x == pytest.approx(64 + (width - 64 - 16) * at_ms / end_ms, abs=0.05)
    tool_mark = next(g for g in root.iter(f"{SVG}g") if g.get("data-kind") == "tool")
    assert (
        tool_mark.find(f"{SVG}title").text
        == f"00:12 tool lookup_order: ok in {tool.duration_ms / 1000:.1f} s"
    )
    assert next(g for g in root.iter(f"{SVG}g") if g.get("class") == "trigger").get("data-tokens") == "5000"
    # the text alternative: the same events in a table, and the SVG's title/desc
    rows = re.findall(r'<tr class="event" data-kind="(\w+)" data-at-ms="(\d+)">', response.text)
    assert [(k, int(ms)) for k, ms in rows] == expected
    assert root.find(f"{SVG}desc").text.startswith(f"{len(points)} responses")
    assert "2 summaries, 1 barge-ins, 1 tool calls" in root.find(f"{SVG}desc").text


async def test_cost_on_the_page_and_in_the_json_match_the_core(seeded) -> None:  # type: ignore[no-untyped-def]
    client, records = seeded
    cost = call_cost(records[3], TABLE)
    assert cost.tokens_saved > 0 and cost.cost_usd is not None
    page = (await client.get("/tickets/4")).text
    assert f'<dd id="cost-usd">${cost.cost_usd:.4f}</dd>' in page
    assert f"${cost.cost_without_summaries_usd:.4f}" in page and f"{cost.tokens_saved:,} input tokens" in page
    data = (await client.get("/api/tickets/4")).json()
    assert data["cost"] == cost.to_json()
    assert len(data["response_usage"]) == len(records[3].response_usage)


async def test_the_dashboard_shows_the_day(seeded) -> None:  # type: ignore[no-untyped-def]
    client, records = seeded
    response = await client.get("/tickets/stats", params={"since": "2026-12-01", "until": "2026-12-01"})
    assert response.status_code == 200
    html = response.text
    assert "6 calls" in html
    assert '<g class="bar" data-label="2026-12-01" data-value="6">' in html
    assert '<dd id="stat-follow-ups">3</dd>' in html
    total = sum(call_cost(r, TABLE).cost_usd or 0 for r in records)
    assert f"${total:.4f}" in html
    saved = sum(call_cost(r, TABLE).tokens_saved for r in records)
    assert f'<span id="stat-tokens-saved">{saved:,}</span>' in html
    assert '<dd id="stat-summary-failures">1 failed attempts; 1 tickets' in html
    data = (
        await client.get("/api/tickets/stats", params={"since": "2026-12-01", "until": "2026-12-01"})
    ).json()
    assert data["calls"] == 6 and data["calls_per_day"] == [{"day": "2026-12-01", "calls": 6}]
    assert data["total_cost_usd"] == pytest.approx(total)
    assert data["tokens_saved"] == saved and data["open_follow_ups"] == 3
    # the outcome mix is the tickets' outcomes (talked, transferred; none for the call whose final
    # status never came), not their end reasons ("caller hung up", "transferred to a human (...)")
    outcomes: Counter[str] = Counter()
    for n in range(1, 7):
        outcomes[(await client.get(f"/api/tickets/{n}")).json()["outcome"] or "unknown"] += 1
    assert outcomes == {"talked": 4, "transferred": 1, "unknown": 1}
    assert data["outcome_mix"] == outcomes and "end_reason_mix" not in data
    svg = re.search(r'<svg [^>]*id="chart-outcome".*?</svg>', html, re.S)
    assert svg is not None
    bars = re.findall(r'<g class="bar" data-label="([^"]+)" data-value="(\d+)">', svg.group(0))
    assert {label: int(n) for label, n in bars} == outcomes
    assert "caller hung up" not in svg.group(0)
    other_day = (await client.get("/api/tickets/stats", params={"since": "2026-12-02"})).json()
    assert other_day["calls"] == 0


async def test_the_dashboard_needs_the_login_and_refuses_bad_dates(seeded) -> None:  # type: ignore[no-untyped-def]
    client, _ = seeded
    for path in ("/tickets/stats", "/api/tickets/stats"):
        assert (await client.get(path, auth=("admin", "wrong"))).status_code == 401
    bad = await client.get("/tickets/stats", params={"since": "yesterday"})
    assert bad.status_code == 400 and "is not a date" in bad.text
    assert (await client.get("/api/tickets/stats", params={"until": "x"})).status_code == 400
