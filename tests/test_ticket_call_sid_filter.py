"""The `call_sid` ticket filter: the store, the JSON API and the list page (the softphone uses it
to find its own call's ticket while the call runs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from callbot.adapters.store_migrate import upgrade_database
from callbot.adapters.store_sql import SqlTicketStore
from callbot.core.record import CallInfo, CallRecord, TranscriptEntry
from callbot.core.ticket import TicketStatus
from callbot.core.ticket_views import TicketFilters
from callbot.web.review import review_router

AUTH = ("admin", "call-sid-test")
BASE = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def record(sid: str, minutes: int) -> CallRecord:
    return CallRecord(
        info=CallInfo(sid, "MZ" + sid, "AC1", "+15550100", "+15550199"),
        started_at=BASE + timedelta(minutes=minutes),
        transcript=(TranscriptEntry(f"{sid}-0", "user", f"hello from {sid}"),),
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlTicketStore]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'tickets.db'}"
    await upgrade_database(url)
    store = await SqlTicketStore.open(url)
    for n, sid in enumerate(["CAaaa", "CAbbb", "CAaaa2"]):
        await store.upsert_call(record(sid, n), TicketStatus.IN_PROGRESS)
    yield store
    await store.close()


@pytest.fixture
async def client(store: SqlTicketStore) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(review_router(lambda: store, *AUTH))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://review.test", auth=AUTH
    ) as client:
        yield client


def test_filter_from_strings_trims_and_treats_blank_as_any() -> None:
    assert TicketFilters.from_strings(call_sid="  CA123 ").call_sid == "CA123"
    assert TicketFilters.from_strings(call_sid="  ").call_sid is None
    assert TicketFilters.from_strings().call_sid is None


async def test_store_lists_exactly_one_call(store: SqlTicketStore) -> None:
    page = await store.list(TicketFilters(call_sid="CAaaa"))
    assert [i.call_sid for i in page.items] == ["CAaaa"]  # an exact match, not a prefix
    assert (await store.list(TicketFilters(call_sid="CAnone"))).total == 0
    both = await store.list(TicketFilters(call_sid="CAbbb", status="in_progress"))
    assert [i.call_sid for i in both.items] == ["CAbbb"]
    assert (await store.list(TicketFilters(call_sid="CAbbb", status="complete"))).total == 0
    assert (await store.list(TicketFilters())).total == 3


async def test_json_api_call_sid_filter(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/tickets", params={"call_sid": "CAbbb"})
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 1 and body["items"][0]["call_sid"] == "CAbbb"
    ticket = await client.get(f"/api/tickets/{body['items'][0]['id']}")
    assert ticket.json()["transcript"][0]["text"] == "hello from CAbbb"
    assert (await client.get("/api/tickets", params={"call_sid": "CAzzz"})).json()["total"] == 0
    assert (await client.get("/api/tickets", params={"call_sid": ""})).json()["total"] == 3
    too_long = await client.get("/api/tickets", params={"call_sid": "C" * 65})
    assert too_long.status_code == 400
    unauthenticated = await client.get("/api/tickets", params={"call_sid": "CAbbb"}, auth=("admin", "wrong"))
    assert unauthenticated.status_code == 401


async def test_list_page_keeps_the_call_sid_filter(client: httpx.AsyncClient) -> None:
    response = await client.get("/tickets", params={"call_sid": "CAaaa2"})
    assert response.status_code == 200
    assert ">1 ticket " in response.text and response.text.count('class="ticket-row"') == 1
    # The link to the same list as JSON carries the filter along.
    assert "/api/tickets?call_sid=CAaaa2" in response.text
