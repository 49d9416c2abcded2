"""The review pages' part of returning callers: earlier calls, the forget form, the number filter."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from test_review_web import AUTH, BASE, make_client, record, summary

from callbot.adapters.store_migrate import upgrade_database
from callbot.adapters.store_sql import SqlTicketStore
from callbot.core.ticket import TicketStatus


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlTicketStore]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'tickets.db'}"
    await upgrade_database(url)
    store = await SqlTicketStore.open(url)
    await store.upsert_call(record("CA1", BASE, [("user", "Router")]), TicketStatus.PENDING_SUMMARY)
    await store.complete("CA1", summary("Router broken <b>now</b>", "technical"))  # ticket 1
    seeded = replace(record("CA2", BASE + timedelta(days=1), [("user", "Again")]), memory_ticket_ids=(1,))
    await store.upsert_call(seeded, TicketStatus.PENDING_SUMMARY)  # ticket 2, seeded by 1
    other = record("CA3", BASE, [("user", "Hi")])
    other = replace(other, info=replace(other.info, from_number="+15550142"))
    await store.upsert_call(other, TicketStatus.PENDING_SUMMARY)  # ticket 3, someone else
    yield store
    await store.close()


@pytest.fixture
async def client(store: SqlTicketStore) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(store) as client:
        yield client


async def test_the_ticket_page_lists_the_earlier_calls_that_seeded_it(client: httpx.AsyncClient) -> None:
    page = (await client.get("/tickets/2", auth=AUTH)).text
    section = page[page.index('id="earlier-calls"') :]
    assert "Earlier calls from this number" in section
    assert '<a href="/tickets/1">#1</a> Router broken &lt;b&gt;now&lt;/b&gt;' in section
    assert '<a id="number-calls" href="/tickets?number=%2B15550100">All calls from +15550100</a>' in section
    unseeded = (await client.get("/tickets/1", auth=AUTH)).text
    assert "No earlier call seeded this call." in unseeded
    data = (await client.get("/api/tickets/2", auth=AUTH)).json()
    assert data["memory_ticket_ids"] == [1] and data["memory_excluded"] is False


async def test_the_forget_form_excludes_the_ticket_behind_the_same_login(
    client: httpx.AsyncClient, store: SqlTicketStore
) -> None:
    page = (await client.get("/tickets/1", auth=AUTH)).text
    assert re.search(r'<form method="post" action="/tickets/1/forget" id="forget-form">', page)
    assert (await client.post("/tickets/1/forget")).status_code == 401
    assert (await client.post("/tickets/1/forget", auth=("admin", "wrong"))).status_code == 401
    assert (await store.earlier_calls("+15550100", BASE - timedelta(days=1), 3))[0].ticket_id == 1
    done = await client.post("/tickets/1/forget", auth=AUTH, headers={"Origin": "http://review.test"})
    assert done.status_code == 303 and done.headers["location"] == "/tickets/1"
    assert await store.earlier_calls("+15550100", BASE - timedelta(days=1), 3) == []
    after = (await client.get("/tickets/1", auth=AUTH)).text
    assert 'id="memory-excluded"' in after and 'id="forget-form"' not in after
    assert (await client.post("/tickets/99/forget", auth=AUTH)).status_code == 404


async def test_a_cross_site_forget_is_refused(client: httpx.AsyncClient, store: SqlTicketStore) -> None:
    foreign = await client.post("/tickets/1/forget", auth=AUTH, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    fetch = await client.post("/api/tickets/1/forget", auth=AUTH, headers={"Sec-Fetch-Site": "cross-site"})
    assert fetch.status_code == 403
    view = await store.get(1)
    assert view is not None and view.item.memory_excluded is False
    api = await client.post("/api/tickets/1/forget", auth=AUTH)
    assert api.status_code == 200 and api.json() == {"id": 1, "memory_excluded": True}


async def test_the_list_and_the_api_filter_by_number(client: httpx.AsyncClient) -> None:
    api = (await client.get("/api/tickets", params={"number": "+15550142"}, auth=AUTH)).json()
    assert [t["call_sid"] for t in api["items"]] == ["CA3"]
    page = (await client.get("/tickets", params={"number": "+1 555 0100"}, auth=AUTH)).text
    assert 'name="number" value="+1 555 0100"' in page
    assert "2 tickets" in page
    bad = await client.get("/api/tickets", params={"number": "<x>"}, auth=AUTH)
    assert bad.status_code == 400 and "not a phone number" in bad.json()["error"]
