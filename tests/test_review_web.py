"""The review pages and JSON API, in process through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from callbot.adapters.store_migrate import upgrade_database
from callbot.adapters.store_sql import SqlTicketStore
from callbot.core.record import (
    CallInfo,
    CallRecord,
    SummaryEvent,
    ToolCallEvent,
    TranscriptEntry,
    UsageTotals,
)
from callbot.core.ticket import TicketStatus
from callbot.web.review import review_router

BASE = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
AUTH = ("admin", "s3cret pw")
HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'


def record(sid: str, started: datetime, lines: list[tuple[str, str]], **kw: object) -> CallRecord:
    transcript = tuple(
        TranscriptEntry(f"{sid}-{i}", role, text, at_ms=i * 5000)  # type: ignore[arg-type]
        for i, (role, text) in enumerate(lines)
    )
    return CallRecord(
        info=CallInfo(sid, "MZ" + sid, "AC1", "+15550100", "+15550199"),
        started_at=started,
        ended_at=started + timedelta(seconds=75),
        transcript=transcript,
        usage=UsageTotals(responses=2, input_tokens=1200, output_tokens=345),
        realtime_model="gpt-realtime",
        end_reason="caller hung up",
        **kw,  # type: ignore[arg-type]
    )


def summary(title: str, category: str, priority: str = "normal") -> dict[str, object]:
    return {
        "title": title,
        "summary": f"The caller needed help: {title}.",
        "caller_request": "Fix it",
        "outcome": "Promised a call back",
        "category": category,
        "priority": priority,
        "sentiment": "negative",
        "action_items": [{"description": "Call Anna back", "owner": "billing team", "due": "Friday"}],
        "facts": [{"label": "invoice", "value": "INV-4711"}],
        "follow_up_needed": True,
        "language": "en",
    }


async def seed(url: str) -> None:
    await upgrade_database(url)
    store = await SqlTicketStore.open(url)
    detailed = record(
        "CA1",
        BASE,
        [
            ("assistant", "Hello, how can I help?"),
            ("user", "My invoice INV-4711 is wrong."),
            ("assistant", "Let me look that up for"),
            ("user", HOSTILE),
        ],
        summaries=(SummaryEvent("s1", 12_000, "Caller disputes INV-4711.", 900, 3, ("CA1-0",)),),
    )
    talked_over = replace(detailed.transcript[2], interrupted=True, heard_ms=1500)
    detailed = replace(detailed, transcript=(*detailed.transcript[:2], talked_over, detailed.transcript[3]))
    await store.upsert_call(detailed, TicketStatus.PENDING_SUMMARY)
    await store.complete("CA1", summary(f"Invoice dispute {HOSTILE}", "billing", "high"))
    await store.upsert_call(
        record("CA2", BASE + timedelta(days=1), [("user", "Router error 651")]), "pending_summary"
    )
    await store.complete("CA2", summary("Router broken", "technical"))
    await store.upsert_call(
        record("CA3", BASE + timedelta(days=2), [("user", "Still talking")]), "in_progress"
    )
    for i in range(27):  # enough for a second page
        await store.upsert_call(
            record(f"CB{i}", BASE - timedelta(days=1, minutes=i), [("user", "hi")]), "pending_summary"
        )
    await store.close()


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded database, built once; each test gets its own copy."""
    path = tmp_path_factory.mktemp("review") / "seeded.db"
    asyncio.run(seed(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture
async def store(seeded_db: Path, tmp_path: Path) -> AsyncIterator[SqlTicketStore]:
    copy = tmp_path / "tickets.db"
    shutil.copyfile(seeded_db, copy)
    store = await SqlTicketStore.open(f"sqlite+aiosqlite:///{copy}")
    yield store
    await store.close()


def make_client(store: SqlTicketStore, password: str | None = AUTH[1]) -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(review_router(lambda: store, AUTH[0], password))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://review.test")


@pytest.fixture
async def client(store: SqlTicketStore) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(store) as client:
        yield client


def assert_secure(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    assert response.headers["cache-control"] == "no-store"


# ----- access -----


@pytest.mark.parametrize("path", ["/tickets", "/tickets/1", "/api/tickets", "/api/tickets/1"])
async def test_every_route_requires_the_admin_login(client: httpx.AsyncClient, path: str) -> None:
    bad_headers = [
        {},
        {"Authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()},
        {"Authorization": "Basic " + base64.b64encode(b"root:s3cret pw").decode()},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Bearer s3cret pw"},
    ]
    for headers in bad_headers:
        response = await client.get(path, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"].startswith('Basic realm="callbot tickets"')
        assert "INV-4711" not in response.text
        assert_secure(response)
    assert (await client.get(path, auth=AUTH)).status_code == 200


async def test_without_a_password_the_ui_does_not_exist(store: SqlTicketStore) -> None:
    async with make_client(store, password=None) as client:
        for path in ("/tickets", "/tickets/1", "/api/tickets", "/api/tickets/1", "/review-static/review.css"):
            response = await client.get(path, auth=("admin", ""))
            assert response.status_code == 404, path
            assert "INV-4711" not in response.text
            assert_secure(response)


# ----- list page -----


async def test_list_shows_newest_first_with_paging(client: httpx.AsyncClient) -> None:
    response = await client.get("/tickets", auth=AUTH)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert_secure(response)
    html = response.text
    assert "30 tickets · page 1 of 2" in html
    assert "Still talking" not in html  # the list shows titles, not transcripts
    assert html.index("Router broken") < html.index("Invoice dispute")
    assert 'href="/tickets?page=2"' in html and "Newer" not in html
    second = (await client.get("/tickets?page=2", auth=AUTH)).text
    assert second.count('class="ticket-row"') == 5 and "Newer" in second and "Older" not in second


async def test_list_filters(client: httpx.AsyncClient) -> None:
    html = (await client.get("/tickets", params={"category": "technical"}, auth=AUTH)).text
    assert "Router broken" in html and "Invoice dispute" not in html and "1 ticket · page 1 of 1" in html
    assert '<option value="technical" selected>' in html

    html = (await client.get("/tickets", params={"q": "inv-4711", "priority": "high"}, auth=AUTH)).text
    assert "Invoice dispute" in html and "Router broken" not in html

    html = (await client.get("/tickets", params={"status": "in_progress"}, auth=AUTH)).text
    assert "1 ticket ·" in html and "(no summary yet)" in html

    html = (
        await client.get("/tickets", params={"since": "2024-05-02", "until": "2024-05-02"}, auth=AUTH)
    ).text
    assert "Router broken" in html and "1 ticket ·" in html

    html = (await client.get("/tickets", params={"q": "nothing like this"}, auth=AUTH)).text
    assert "No tickets match these filters." in html

    filtered = await client.get(
        "/tickets", params={"category": "billing", "q": "dispute", "page": 1}, auth=AUTH
    )
    assert 'href="/api/tickets?q=dispute&amp;category=billing&amp;page=1"' in filtered.text


async def test_bad_filter_values_are_explained(client: httpx.AsyncClient) -> None:
    response = await client.get("/tickets", params={"since": "last tuesday"}, auth=AUTH)
    assert response.status_code == 400
    assert "since &#39;last tuesday&#39; is not a date (use YYYY-MM-DD" in response.text
    response = await client.get("/tickets", params={"status": "closed"}, auth=AUTH)
    assert response.status_code == 400 and "status must be one of" in response.text
    response = await client.get("/tickets", params={"page": "zero"}, auth=AUTH)
    assert response.status_code == 400 and "Invalid request parameters." in response.text
    assert "Traceback" not in response.text
    assert_secure(response)


# ----- ticket page -----


async def test_ticket_page_shows_summary_details_and_the_conversation(client: httpx.AsyncClient) -> None:
    response = await client.get("/tickets/1", auth=AUTH)
    assert response.status_code == 200
    assert_secure(response)
    html = response.text
    assert "The caller needed help: Invoice dispute" in html
    assert "<th>invoice</th><td>INV-4711</td>" in html
    assert "Call Anna back — <em>billing team</em> (due Friday)" in html
    assert 'id="from-number">+15550100<' in html and "1 min 15 s" in html and "caller hung up" in html
    assert "1200 in · 345 out · 1545 total" in html
    assert '<li class="turn user">' in html and '<li class="turn assistant interrupted">' in html
    assert "interrupted after 1.5 s" in html
    assert (
        "00:12 · in-call summary s1 (covers 3 earlier turns)" in html and "Caller disputes INV-4711." in html
    )
    turns = [
        html.index(text)
        for text in ("Hello, how can I help?", "My invoice INV-4711 is wrong.", "Caller disputes")
    ]
    assert turns == sorted(turns)


async def test_pending_ticket_page_says_why_there_is_no_summary(
    client: httpx.AsyncClient, store: SqlTicketStore
) -> None:
    await store.mark_summary_failed("CB0", "OpenAI answered HTTP 500")
    view = await store.get_by_call_sid("CB0")
    assert view is not None
    html = (await client.get(f"/tickets/{view.id}", auth=AUTH)).text
    assert "No structured summary yet." in html and "Attempts so far: 1." in html
    assert "Last error: OpenAI answered HTTP 500" in html


async def test_hostile_transcript_and_summary_text_is_escaped(client: httpx.AsyncClient) -> None:
    for path in ("/tickets", "/tickets/1"):
        html = (await client.get(path, auth=AUTH)).text
        assert "<script>" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html


async def test_unknown_and_malformed_ticket_ids(client: httpx.AsyncClient) -> None:
    missing = await client.get("/tickets/999", auth=AUTH)
    assert missing.status_code == 404 and "Ticket 999 not found." in missing.text
    assert_secure(missing)
    malformed = await client.get("/tickets/abc", auth=AUTH)
    assert malformed.status_code == 400


# ----- JSON API -----


async def test_json_api_lists_with_the_same_filters(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/tickets", params={"category": "billing"}, auth=AUTH)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert_secure(response)
    data = response.json()
    assert data["total"] == 1 and data["pages"] == 1
    [item] = data["items"]
    assert (
        item["call_sid"] == "CA1"
        and item["priority"] == "high"
        and item["summary"]["facts"][0]["value"] == "INV-4711"
    )
    assert "transcript" not in item

    paged = (await client.get("/api/tickets", params={"page": 2, "page_size": 10}, auth=AUTH)).json()
    assert paged["total"] == 30 and paged["pages"] == 3 and len(paged["items"]) == 10


async def test_json_api_ticket_and_errors(client: httpx.AsyncClient) -> None:
    data = (await client.get("/api/tickets/1", auth=AUTH)).json()
    assert data["status"] == "complete" and data["usage"]["total_tokens"] == 1545
    assert [e["text"] for e in data["transcript"]][:2] == [
        "Hello, how can I help?",
        "My invoice INV-4711 is wrong.",
    ]
    assert data["transcript"][3]["text"] == HOSTILE  # JSON carries the words as they were said
    assert data["in_call_summaries"][0]["summary_id"] == "s1"

    missing = await client.get("/api/tickets/999", auth=AUTH)
    assert missing.status_code == 404 and missing.json() == {"error": "Ticket 999 not found."}
    bad = await client.get("/api/tickets", params={"until": "soon"}, auth=AUTH)
    assert bad.status_code == 400 and "is not a date" in bad.json()["error"]


# ----- failures -----


async def test_database_outage_is_a_503_without_internals(store: SqlTicketStore) -> None:
    await store.close()
    async with make_client(store) as client:
        page = await client.get("/tickets", auth=AUTH)
        assert page.status_code == 503 and "The ticket database is unavailable" in page.text
        assert "closed" not in page.text and "Traceback" not in page.text
        assert_secure(page)
        api = await client.get("/api/tickets/1", auth=AUTH)
        assert api.status_code == 503 and api.json()["error"].startswith("The ticket database is unavailable")


async def test_store_not_ready_is_a_503(tmp_path: Path) -> None:
    def not_ready() -> SqlTicketStore:
        raise RuntimeError("lifespan has not opened the store")

    app = FastAPI()
    app.include_router(review_router(not_ready, AUTH[0], AUTH[1]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/tickets", auth=AUTH)
    assert response.status_code == 503 and "lifespan" not in response.text


async def test_stylesheet_is_served_without_login(client: httpx.AsyncClient) -> None:
    response = await client.get("/review-static/review.css")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/css")
    assert ".turn.interrupted" in response.text
    assert_secure(response)


async def test_turns_show_when_they_were_said_on_the_page_and_in_the_json(
    client: httpx.AsyncClient, store: SqlTicketStore
) -> None:
    spoken = CallRecord(
        info=CallInfo("CA9", "MZ9", "AC1", "+15550100", "+15550199"),
        started_at=BASE,
        transcript=(  # the items arrived at 8.9 s and 9.0 s; the speech began at 6.1 s and 9.2 s
            TranscriptEntry(
                "u1", "user", "Hi, this is Maria.", at_ms=8_900, started_ms=6_100, ended_ms=8_400
            ),
            TranscriptEntry(
                "a1", "assistant", "Hello Maria.", at_ms=9_000, started_ms=9_200, ended_ms=12_800
            ),
        ),
    )
    ticket_id = await store.upsert_call(spoken, TicketStatus.IN_PROGRESS)
    html = (await client.get(f"/tickets/{ticket_id}", auth=AUTH)).text
    assert '<span class="when">00:06–00:08</span> · Caller' in html
    assert '<span class="when">00:09–00:12</span> · Assistant' in html
    data = (await client.get(f"/api/tickets/{ticket_id}", auth=AUTH)).json()
    assert [(e["at_ms"], e["started_ms"], e["ended_ms"]) for e in data["transcript"]] == [
        (8_900, 6_100, 8_400),
        (9_000, 9_200, 12_800),
    ]
    # a ticket stored before speech times were kept shows when its turns arrived
    old = (await client.get("/tickets/1", auth=AUTH)).text
    assert '<span class="when">00:05</span> · Caller' in old
    assert (await client.get("/api/tickets/1", auth=AUTH)).json()["transcript"][1]["started_ms"] is None


async def test_tool_calls_show_between_the_turns_with_their_outcome(
    client: httpx.AsyncClient, store: SqlTicketStore
) -> None:
    call = CallRecord(
        info=CallInfo("CA8", "MZ8", "AC1", "+15550100", "+15550199"),
        started_at=BASE,
        transcript=(
            TranscriptEntry(
                "u1", "user", "Where is order 4417?", at_ms=3_000, started_ms=2_000, ended_ms=3_000
            ),
            TranscriptEntry(
                "a1", "assistant", "It has shipped.", at_ms=6_000, started_ms=6_500, ended_ms=8_000
            ),
        ),
        tool_calls=(
            ToolCallEvent(
                "call_1",
                "f1",
                "lookup_order",
                '{"order_number": "4417"}',
                output='{"status": "shipped"}',
                started_ms=4_000,
                ended_ms=5_200,
            ),
            ToolCallEvent(
                "call_2",
                "f2",
                "lookup_order",
                HOSTILE,
                error=f"HTTP 503: {HOSTILE}",
                outcome="error",
                started_ms=9_000,
                ended_ms=9_100,
            ),
        ),
        end_reason="caller hung up",
    )
    ticket_id = await store.upsert_call(call, TicketStatus.PENDING_SUMMARY)
    html = (await client.get(f"/tickets/{ticket_id}", auth=AUTH)).text
    caller, tool, agent = (
        html.index(s) for s in ("Where is order 4417?", "tool <strong>lookup_order", "It has shipped.")
    )
    assert caller < tool < agent  # between the turn that asked and the one that used it
    assert '<li class="tool-call ok">' in html and '<li class="tool-call error">' in html
    assert "{&#34;status&#34;: &#34;shipped&#34;}" in html and "1.2 s" in html
    assert HOSTILE not in html  # arguments and errors are escaped like the transcript
    data = (await client.get(f"/api/tickets/{ticket_id}", auth=AUTH)).json()
    assert [(t["name"], t["outcome"]) for t in data["tool_calls"]] == [
        ("lookup_order", "ok"),
        ("lookup_order", "error"),
    ]
