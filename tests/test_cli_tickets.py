"""`callbot tickets ...` and `callbot db upgrade` against a SQLite file named by CALLBOT_DATABASE_URL."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from callbot.adapters.store_migrate import upgrade_database
from callbot.adapters.store_sql import SqlTicketStore
from callbot.cli_tickets import register
from callbot.core.cost import DEFAULT_PRICE_TABLE, call_cost, price_table
from callbot.core.record import CallInfo, CallRecord, TranscriptEntry
from callbot.core.ticket import TicketStatus
from callbot.testing.fake_openai_http import FakeOpenAIControl, create_fake_openai_app, serve_app_in_thread
from tests.pictures_helpers import seed_day

BASE = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


@dataclass
class Result:
    code: int
    out: str
    err: str


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="callbot")
    register(root.add_subparsers(dest="command", required=True))
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    try:
        args = parser().parse_args(argv)
        code = args.func(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def record(sid: str, started: datetime, lines: list[str], from_number: str = "+15550100") -> CallRecord:
    return CallRecord(
        info=CallInfo(sid, "MZ" + sid, "AC1", from_number, "+15550199"),
        started_at=started,
        ended_at=started + timedelta(seconds=61),
        transcript=tuple(
            TranscriptEntry(f"{sid}-{i}", "user" if i % 2 == 0 else "assistant", text, at_ms=i * 3000)
            for i, text in enumerate(lines)
        ),
        end_reason="caller hung up",
    )


def summary(title: str, category: str, **extra: object) -> dict[str, object]:
    return {
        "title": title,
        "summary": f"About {title}.",
        "caller_request": "help",
        "outcome": "call back promised",
        "category": category,
        "priority": "high",
        "sentiment": "neutral",
        "action_items": [{"description": "Call back", "owner": "billing", "due": "Friday"}],
        "facts": [{"label": "invoice", "value": "4711"}],
        "follow_up_needed": True,
        "language": "en",
        **extra,
    }


async def seed(url: str) -> None:
    await upgrade_database(url)
    store = await SqlTicketStore.open(url)
    await store.upsert_call(
        record("CA1", BASE, ["My invoice 4711 is wrong", "Let me check"]), "pending_summary"
    )
    await store.complete("CA1", summary("Invoice 4711 wrong", "billing", outcome='=HYPERLINK("http://x")'))
    await store.upsert_call(record("CA2", BASE + timedelta(days=1), ["Router error 651"]), "pending_summary")
    await store.complete("CA2", summary("Router error", "technical"))
    await store.upsert_call(
        record("CA3", BASE + timedelta(days=2), ["Password reset please"]), "pending_summary"
    )
    await store.close()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no .env, and the settings pointing at a fresh SQLite file."""
    monkeypatch.chdir(tmp_path)
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "CALLBOT_TICKET_WEBHOOK_URL",
        "CALLBOT_REDACT_PATTERNS",
    ):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "data" / "tickets.db"
    monkeypatch.setenv("CALLBOT_DATABASE_URL", f"sqlite+aiosqlite:///{db}")
    monkeypatch.setenv("CALLBOT_SPOOL_DIR", str(tmp_path / "spool"))
    return db


@pytest.fixture
def seeded(env: Path) -> Path:
    asyncio.run(seed(f"sqlite+aiosqlite:///{env}"))
    return env


# ----- db upgrade -----


def test_db_upgrade_creates_the_schema(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "db", "upgrade")
    assert result.code == 0 and "is at revision 0006" in result.out
    assert env.exists()
    assert run(capsys, "db", "upgrade").code == 0  # again: nothing to do
    empty = run(capsys, "tickets", "list")
    assert (empty.code, empty.out.strip()) == (0, "no tickets match")


def test_commands_explain_a_missing_schema(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env.parent.mkdir(parents=True)
    result = run(capsys, "tickets", "list")
    assert result.code == 1 and "callbot db upgrade" in result.err


# ----- list -----


def test_list_prints_a_table_newest_first(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "tickets", "list")
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].split() == ["ID", "STARTED", "(UTC)", "STATUS", "CATEGORY", "PRIORITY", "FROM", "TITLE"]
    assert lines[1].split()[:4] == ["3", "2024-05-03", "09:00", "pending_summary"]
    assert lines[1].endswith("(no summary yet)")
    assert lines[2].split()[4:] == ["technical", "high", "+15550100", "Router", "error"]
    assert lines[3].endswith("Invoice 4711 wrong")
    assert lines[-1] == "page 1 of 1, 3 ticket(s)"


def test_list_filters_and_json(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "tickets", "list", "--category", "billing", "--json")
    data = json.loads(result.out)
    assert result.code == 0 and data["total"] == 1 and data["items"][0]["title"] == "Invoice 4711 wrong"

    ids = lambda *a: [i["id"] for i in json.loads(run(capsys, "tickets", "list", "--json", *a).out)["items"]]  # noqa: E731
    assert ids("--status", "pending_summary") == [3]
    assert ids("--search", "router 651") == [2]
    assert ids("--since", "2024-05-02") == [3, 2]
    assert ids("--until", "2024-05-01") == [1]
    assert ids("--page", "2", "--page-size", "2") == [1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tickets", "list", "--since", "yesterday"], "is not a date"),
        (["tickets", "list", "--status", "closed"], "invalid choice"),
        (["tickets", "list", "--page", "0"], "must be 1 or more"),
        (["tickets", "show", "abc"], "not a whole number"),
        (["tickets"], "required"),
    ],
)
def test_usage_errors_exit_2(
    seeded: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    result = run(capsys, *argv)
    assert result.code == 2 and message in result.err


# ----- show -----


def test_show_prints_summary_and_transcript(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "tickets", "show", "1")
    assert result.code == 0
    out = result.out
    assert out.startswith(
        "Ticket 1 · complete · billing · priority high · sentiment neutral · follow-up needed"
    )
    assert "Title: Invoice 4711 wrong" in out
    assert "Call: +15550100 -> +15550199, started 2024-05-01 09:00:00 UTC, 61 s, ended: caller hung up" in out
    assert "Action: Call back (billing, due Friday)" in out and "Fact: invoice: 4711" in out
    assert out.rstrip().endswith("[00:00] Caller: My invoice 4711 is wrong\n[00:03] Assistant: Let me check")

    as_json = json.loads(run(capsys, "tickets", "show", "3", "--json").out)
    assert (
        as_json["status"] == "pending_summary" and as_json["transcript"][0]["text"] == "Password reset please"
    )


def test_show_unknown_ticket_exits_1(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "tickets", "show", "99")
    assert result.code == 1 and result.out == "" and "ticket 99 not found" in result.err


# ----- export -----


def test_export_csv_is_spreadsheet_safe(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "tickets", "export", "--format", "csv", "--status", "complete")
    assert result.code == 0
    rows = list(csv.DictReader(io.StringIO(result.out)))
    assert [r["id"] for r in rows] == ["2", "1"]
    invoice = rows[1]
    assert invoice["title"] == "Invoice 4711 wrong" and invoice["category"] == "billing"
    assert invoice["facts"] == "invoice: 4711" and invoice["action_items"] == "Call back"
    assert invoice["outcome"] == '\'=HYPERLINK("http://x")'  # a formula would run in a spreadsheet
    assert invoice["from_number"] == "+15550100"  # phone numbers stay as they are


def test_export_json_to_a_file(seeded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.json"
    result = run(
        capsys, "tickets", "export", "--format", "json", "--output", str(target), "--search", "wrong"
    )
    assert result.code == 0 and result.out == "" and f"exported 1 ticket(s) to {target}" in result.err
    [ticket] = json.loads(target.read_text("utf-8"))
    assert ticket["call_sid"] == "CA1" and ticket["transcript"][1]["text"] == "Let me check"


# ----- retry -----


def test_retry_completes_pending_tickets(
    seeded: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    control = FakeOpenAIControl()
    with serve_app_in_thread(create_fake_openai_app(control)) as url:
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
        result = run(capsys, "tickets", "retry")
    assert result.code == 0
    assert result.out.strip() == "ticket 3 (CA3): complete - Password reset please"
    assert json.loads(run(capsys, "tickets", "show", "3", "--json").out)["status"] == "complete"
    again = run(capsys, "tickets", "retry")
    assert again.code == 0 and "no tickets are waiting for a summary" in again.out


def test_retry_reports_failures_and_exits_1(
    seeded: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    control = FakeOpenAIControl()
    control.fail(100)
    with serve_app_in_thread(create_fake_openai_app(control)) as url:
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
        result = run(capsys, "tickets", "retry")
    assert result.code == 1
    assert result.out.startswith("ticket 3 (CA3): still pending - OpenAI answered HTTP 500")


def test_retry_needs_an_api_key(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "tickets", "retry")
    assert result.code == 1 and "OPENAI_API_KEY is not set" in result.err


def test_retry_writes_spooled_tickets_first(
    seeded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from callbot.adapters.spool import Spool

    Spool(tmp_path / "spool").put(record("CA9", BASE, ["Spooled while the database was down"]), None)
    with serve_app_in_thread(create_fake_openai_app()) as url:
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
        result = run(capsys, "tickets", "retry")
    assert result.code == 0
    assert result.out.splitlines()[0] == "wrote 1 spooled ticket(s) to the database"
    assert "(CA9): complete - Spooled while the database was down" in result.out
    assert (
        json.loads(run(capsys, "tickets", "list", "--json", "--search", "spooled").out)["items"][0]["status"]
        == TicketStatus.COMPLETE
    )


# ----- cost and stats (issue #18) -----


@pytest.fixture
def long_calls(env: Path) -> list[CallRecord]:
    return asyncio.run(seed_day(f"sqlite+aiosqlite:///{env}", datetime(2026, 12, 1, tzinfo=UTC), calls=3))


def test_show_prints_the_cost_and_json_carries_it(
    long_calls: list[CallRecord], capsys: pytest.CaptureFixture[str]
) -> None:
    cost = call_cost(long_calls[1], price_table(DEFAULT_PRICE_TABLE))
    result = run(capsys, "tickets", "show", "2")
    assert result.code == 0
    assert (
        f"Cost: ${cost.cost_usd:.4f} estimated, ${cost.cost_without_summaries_usd:.4f} without summaries"
        in result.out
    )
    assert f"({cost.tokens_saved} input tokens saved)" in result.out
    data = json.loads(run(capsys, "tickets", "show", "2", "--json").out)
    assert data["cost"] == cost.to_json()


def test_stats_prints_the_dashboards_figures(
    long_calls: list[CallRecord], capsys: pytest.CaptureFixture[str]
) -> None:
    table = price_table(DEFAULT_PRICE_TABLE)
    total = sum(call_cost(r, table).cost_usd or 0 for r in long_calls)
    result = run(capsys, "tickets", "stats", "--since", "2026-12-01", "--until", "2026-12-01")
    assert result.code == 0
    assert "Calls: 3 (from 2026-12-01T00:00:00+00:00 before 2026-12-02T00:00:00+00:00)" in result.out
    assert f"Cost: ${total:.4f} total" in result.out
    assert "Open follow-ups: 1" in result.out and "Summary failures: 1 failed attempts" in result.out
    assert "  2026-12-01     3 ###" in result.out
    # by the tickets' outcomes (the third call's final status never came), not their end reasons
    assert "Outcome: talked 1, transferred 1, unknown 1" in result.out
    assert "Status: complete 1, transferred 1, pending_summary 1" in result.out
    data = json.loads(run(capsys, "tickets", "stats", "--json").out)
    assert data["calls"] == 3 and data["total_cost_usd"] == pytest.approx(total)
    assert data["outcome_mix"] == {"talked": 1, "transferred": 1, "unknown": 1}
    assert data["category_mix"] == {"billing": 1, "technical": 1, "uncategorised": 1}
    assert data["tokens_saved"] == sum(call_cost(r, table).tokens_saved for r in long_calls)
    assert json.loads(run(capsys, "tickets", "stats", "--json", "--since", "2027-01-01").out)["calls"] == 0
    assert run(capsys, "tickets", "stats", "--since", "nope").code == 2
