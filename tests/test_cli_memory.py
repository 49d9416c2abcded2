"""`callbot tickets forget`, `callbot tickets purge --number` and `tickets list --number` (issue 17)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from datetime import timedelta
from pathlib import Path

import pytest
from test_cli_tickets import BASE, env, record, run, seed, summary  # noqa: F401 - env is a fixture

from callbot.adapters.store_sql import SqlTicketStore
from callbot.cli_tickets import cmd_purge

CALLER = "+15550100"


async def add_other_caller(url: str) -> None:
    store = await SqlTicketStore.open(url)
    await store.upsert_call(record("CA9", BASE, ["Other"], from_number="+15550142"), "pending_summary")
    await store.complete("CA9", summary("Other caller", "other"))
    await store.close()


async def memory_ids(url: str, number: str = CALLER) -> list[int]:
    store = await SqlTicketStore.open(url)
    try:
        calls = await store.earlier_calls(number, BASE - timedelta(days=3650), 10)
        return [c.ticket_id for c in calls]
    finally:
        await store.close()


@pytest.fixture
def url(env: Path) -> str:  # noqa: F811 - the env fixture
    database_url = f"sqlite+aiosqlite:///{env}"
    asyncio.run(seed(database_url))
    asyncio.run(add_other_caller(database_url))
    return database_url


def test_forget_excludes_the_ticket_from_memory(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert asyncio.run(memory_ids(url)) == [2, 1]
    result = run(capsys, "tickets", "forget", "1")
    assert result.code == 0, result.err
    assert "ticket 1 will not seed" in result.out
    assert asyncio.run(memory_ids(url)) == [2]
    shown = json.loads(run(capsys, "tickets", "show", "1", "--json").out)
    assert shown["memory_excluded"] is True
    as_json = run(capsys, "tickets", "forget", "2", "--json")
    assert as_json.code == 0 and json.loads(as_json.out) == {"id": 2, "memory_excluded": True}


def test_forget_of_a_missing_ticket_fails(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "tickets", "forget", "77")
    assert result.code == 1 and "ticket 77 not found" in result.err
    assert run(capsys, "tickets", "forget", "zero").code == 2  # argparse: not a ticket id


def test_purge_with_yes_deletes_only_that_numbers_history(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(capsys, "tickets", "purge", "--number", "+1 555-0100", "--yes", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == {"number": CALLER, "deleted": 3}
    listing = json.loads(run(capsys, "tickets", "list", "--json").out)
    assert [t["from_number"] for t in listing["items"]] == ["+15550142"]
    again = run(capsys, "tickets", "purge", "--number", CALLER, "--yes")
    assert again.code == 0 and "deleted 0 ticket(s)" in again.out


def test_purge_asks_first_and_a_no_keeps_everything(url: str) -> None:
    args = argparse.Namespace(number=CALLER, yes=False, json=False)
    asked: list[str] = []
    out = io.StringIO()
    code = cmd_purge(args, out, confirm=lambda prompt: asked.append(prompt) or "n")
    assert code == 1 and "nothing deleted" in out.getvalue()
    assert asked and "delete 3 ticket(s) of calls from +15550100?" in asked[0]
    assert asyncio.run(memory_ids(url)) == [2, 1]
    out = io.StringIO()
    assert cmd_purge(args, out, confirm=lambda prompt: "yes") == 0
    assert "deleted 3 ticket(s) of calls from +15550100" in out.getvalue()
    assert asyncio.run(memory_ids(url)) == []


def test_purge_usage_errors(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "tickets", "purge").code == 2  # --number is required
    result = run(capsys, "tickets", "purge", "--number", CALLER, "--json")
    assert result.code == 2 and "--json needs --yes" in result.err


def test_list_filters_by_number(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "tickets", "list", "--number", "+15550142", "--json")
    assert result.code == 0
    assert [t["call_sid"] for t in json.loads(result.out)["items"]] == ["CA9"]
    bad = run(capsys, "tickets", "list", "--number", "not a number!")
    assert bad.code == 1 and "is not a phone number" in bad.err
