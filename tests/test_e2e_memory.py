"""Returning callers, end to end: the real server with its own ticket service and SQL store.

Nothing is injected but the Realtime connector (the fake Realtime server): the app reads the
earlier tickets from the database named by `database_url`, and the evidence of the memory is read
back from the fake Realtime server's conversation (what the model was actually given) and from
the tickets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from callbot.adapters.store_sql import SqlTicketStore
from callbot.caller.simulator import HangUp, Say, Silence, Step, WaitForAssistant
from callbot.cli_tickets import cmd_forget
from callbot.core.memory import MEMORY_HEADER, MEMORY_ITEM_ID
from callbot.core.ticket_views import TicketView
from callbot.testing.fake_realtime import Script
from tests.e2e_helpers import speech
from tests.test_e2e_ticket import TicketRig, ticket_rig

GREETING = "Acme, hello."
FIRST = "My router keeps dropping the connection."
SECOND = "The technician never came on Tuesday."
THIRD = "I want to cancel my contract."


def one_turn(line: str) -> Script:
    return Script(greeting=GREETING, user_transcripts=[line], replies=["I see, let me note that."])


def steps() -> list[Step]:
    return [
        WaitForAssistant(timeout_s=10),
        Say(speech(700, seed=7)),
        Silence(100),
        WaitForAssistant(timeout_s=10),
        HangUp(),
    ]


def fake_sessions(rig: TicketRig) -> list[Any]:
    return list(rig.fake.sessions)


def root_memory(session: Any) -> str | None:
    """The text of the memory item if it is the root of the fake Realtime's conversation."""
    items = session.core.conversation.items
    if not items or items[0].id != MEMORY_ITEM_ID:
        return None
    return " ".join(p.get("text", "") for p in items[0].data["content"])


def greeting_said(session: Any) -> str:
    assistant = [i for i in session.core.conversation.items if i.data.get("role") == "assistant"]
    return " ".join(p.get("transcript") or p.get("text") or "" for p in assistant[0].data["content"])


async def ticket(rig: TicketRig, call_sid: str) -> TicketView:
    store = await SqlTicketStore.open(rig.settings.database_url)
    try:
        view = await store.get_by_call_sid(call_sid)
    finally:
        await store.close()
    assert view is not None
    return view


@contextlib.asynccontextmanager
async def rig_for(tmp_path: Path, **overrides: Any) -> AsyncIterator[TicketRig]:
    async with ticket_rig(tmp_path, one_turn(FIRST), **overrides) as rig:
        yield rig


async def call(rig: TicketRig, line: str, from_number: str = "+15551230000") -> tuple[str, Any]:
    """One call saying `line`; its call sid and the fake Realtime session that served it."""
    rig.fake.script.user_transcripts = [line]
    before = len(rig.fake.sessions)
    result = await rig.caller(from_number=from_number).run(steps())
    await rig.settle()
    assert result.outcome == "completed", result.summary()
    assert len(rig.fake.sessions) == before + 1
    return result.call_sid, rig.fake.sessions[-1]


async def test_second_call_remembers_the_first_third_after_forget_sees_only_the_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig_for(tmp_path) as rig:
        sid1, s1 = await call(rig, FIRST)
        first = await ticket(rig, sid1)
        sid2, s2 = await call(rig, SECOND)
        second = await ticket(rig, sid2)
        # `callbot tickets forget <first>` from a terminal, against the same database
        monkeypatch.setenv("CALLBOT_DATABASE_URL", rig.settings.database_url)
        out = io.StringIO()
        code = await asyncio.to_thread(cmd_forget, argparse.Namespace(id=first.id, json=False), out)
        sid3, s3 = await call(rig, THIRD)
        third = await ticket(rig, sid3)
        assert rig.fake.violations == []

    assert code == 0, out.getvalue()
    # The first call had no history: nothing at the root, the plain greeting, no seed recorded.
    assert root_memory(s1) is None
    assert greeting_said(s1) == GREETING
    assert first.memory_ticket_ids == ()
    assert first.item.title and FIRST.rstrip(".") in first.item.title

    # The second starts with the memory message at the root, built from the first's summary,
    # and the fake model's greeting uses it.
    memory2 = root_memory(s2)
    assert memory2 is not None and memory2.startswith(MEMORY_HEADER)
    assert f'ticket #{first.id}: "{first.item.title}"' in memory2
    # from the structured summary's chosen fields only: not the transcript, not the free text
    assert f"The caller wanted: {FIRST}" in memory2
    assert GREETING not in memory2 and "Fake summary" not in memory2
    assert greeting_said(s2) == f"{GREETING} Are you calling about {first.item.title}?"
    assert second.memory_ticket_ids == (first.id,)
    # the memory message is conversation state, not a turn of the call
    assert [e.role for e in second.transcript] == ["assistant", "user", "assistant"]

    # After `forget` of the first, the third call sees only the second.
    memory3 = root_memory(s3)
    assert memory3 is not None
    assert f"ticket #{second.id}:" in memory3 and f"ticket #{first.id}:" not in memory3
    assert first.item.title not in memory3
    assert greeting_said(s3) == f"{GREETING} Are you calling about {second.item.title}?"
    assert third.memory_ticket_ids == (second.id,)


async def test_withheld_number_gets_no_memory_even_with_history(tmp_path: Path) -> None:
    async with rig_for(tmp_path) as rig:
        await call(rig, FIRST, from_number="anonymous")
        await call(rig, SECOND, from_number="+266696687")  # the carrier's 'ANONYMOUS' pseudo-number
        sid, session = await call(rig, THIRD, from_number="anonymous")
        view = await ticket(rig, sid)
    assert root_memory(session) is None
    assert all(i.data.get("role") != "system" for i in session.core.conversation.items)
    assert greeting_said(session) == GREETING
    assert view.memory_ticket_ids == ()


async def test_memory_disabled_seeds_nothing(tmp_path: Path) -> None:
    async with rig_for(tmp_path, memory_enabled=False) as rig:
        await call(rig, FIRST)
        sid, session = await call(rig, SECOND)
        view = await ticket(rig, sid)
    assert root_memory(session) is None
    assert greeting_said(session) == GREETING
    assert view.memory_ticket_ids == ()


async def test_database_down_at_call_start_means_no_memory_and_the_call_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = "postgresql+asyncpg://callbot@127.0.0.1:1/callbot"  # nothing listens on port 1
    async with rig_for(tmp_path, database_url=down, migrate_on_start=False) as rig:
        caplog.set_level("WARNING", logger="callbot.ticketing")
        rig.fake.script.user_transcripts = [FIRST]
        result = await rig.caller().run(steps())
        await rig.settle()
        session = rig.fake.sessions[-1]
    assert result.outcome == "completed", result.summary()
    assert root_memory(session) is None
    assert greeting_said(session) == GREETING
    assert any("memory lookup failed" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in (tmp_path / "spool").glob("*.json")) == [f"{result.call_sid}.json"]


async def test_a_reconnect_gives_the_new_session_the_memory_again_at_the_root(tmp_path: Path) -> None:
    async with rig_for(tmp_path) as rig:
        sid1, _ = await call(rig, FIRST)
        first = await ticket(rig, sid1)
        rig.fake.script.user_transcripts = [SECOND]
        plan = [WaitForAssistant(timeout_s=10), Silence(2500), Say(speech(700, seed=8)), Silence(100)]
        caller = asyncio.create_task(rig.caller().run([*plan, WaitForAssistant(timeout_s=10), HangUp()]))
        while len(rig.fake.sessions) < 2 or not any(
            i.data.get("role") == "assistant" and i.data.get("status") == "completed"
            for i in rig.fake.sessions[1].core.conversation.items
        ):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        await rig.fake.drop_now()  # the Realtime link of the second call drops after its greeting
        result = await caller
        await rig.settle()
        second = await ticket(rig, result.call_sid)
        before, after = rig.fake.sessions[1], rig.fake.sessions[2]
        assert rig.fake.violations == []
    assert result.outcome == "completed", result.summary()
    assert root_memory(before) is not None
    assert root_memory(after) == root_memory(before)  # restored under the same id, first
    assert f'ticket #{first.id}: "{first.item.title}"' in (root_memory(after) or "")
    assert "response.create" not in [e["type"] for e in after.received]  # no second greeting
    assert second.memory_ticket_ids == (first.id,)
    assert [e.role for e in second.transcript] == ["assistant", "user", "assistant"]
