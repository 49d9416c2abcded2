"""`callbot call`: one call and CSV campaigns through the real server, the fake Twilio and its dialer."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from callbot.cli import build_parser
from callbot.cli_calls import CallOptions, Campaign, _prepare, run_campaign
from callbot.settings import Settings
from tests.outbound_rig import ADMIN, OutboundRig, outbound_rig

NUMBERS = [f"+1555888{n:04d}" for n in range(18)]
BAD_LINES = {6: "555-0100", 15: "+15558880003"}  # not E.164; a number already on an earlier line


def campaign_csv(path: Path) -> Path:
    """20 rows: 18 good numbers and two bad rows, on lines 6 and 15 (line 1 is the header)."""
    lines = ["number,instructions,context"]
    good = iter(NUMBERS)
    for line in range(2, 22):
        if line in BAD_LINES:
            lines.append(f"{BAD_LINES[line]},Say hello,")
        else:
            lines.append(f'{next(good)},Remind about the appointment,"{{""slot"": ""{line}""}}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def prepared(rig: OutboundRig, *argv: str) -> tuple[Campaign, CallOptions]:
    # --timeout: a call whose outcome never comes fails its row within a minute, not 30 minutes.
    argv_all = ["call", *argv, "--server", rig.base_url, "--poll-interval", "0.1", "--timeout", "60"]
    args = build_parser().parse_args(argv_all)
    cli_settings = Settings(admin_password=ADMIN[1], _env_file=None)  # type: ignore[call-arg]
    return _prepare(args, cli_settings)


def dialer_options() -> dict[str, object]:
    # No-answer numbers ring for a while, so calls overlap and the limit is what bounds them.
    answers = {NUMBERS[0]: "human", NUMBERS[1]: "busy", NUMBERS[2]: "busy"}
    return {"answers": answers, "default_answer": "no-answer", "ring_s": 0.6}


def created_numbers(rig: OutboundRig) -> list[str]:
    return [r.field("To") or "" for r in rig.rest.requests if r.path.endswith("/Calls.json")]


async def test_a_csv_with_two_bad_rows_places_18_calls_at_most_n_at_once_and_a_rerun_places_none(
    tmp_path: Path,
) -> None:
    csv_path = campaign_csv(tmp_path / "numbers.csv")
    async with outbound_rig(tmp_path, dialer_options=dialer_options()) as rig:
        campaign, options = prepared(rig, "--from-csv", str(csv_path), "--concurrency", "3", "--json")
        out, err = io.StringIO(), io.StringIO()
        code = await run_campaign(campaign, options, out=out, err=err)
        await rig.settle()
        first = created_numbers(rig)
        max_in_flight = rig.dialer.max_in_flight
        again, options = prepared(rig, "--from-csv", str(csv_path), "--concurrency", "3")
        rerun_err = io.StringIO()
        rerun_code = await run_campaign(again, options, out=io.StringIO(), err=rerun_err)
        second = created_numbers(rig)
    assert sorted(first) == sorted(NUMBERS)  # 18 calls, each number once
    assert 2 <= max_in_flight <= 3
    assert code == 1  # two rows were bad
    report = json.loads(out.getvalue())
    assert sorted(b["line"] for b in report["bad_rows"]) == [6, 15]
    assert "E.164" in next(b["error"] for b in report["bad_rows"] if b["line"] == 6)
    assert "already on line" in next(b["error"] for b in report["bad_rows"] if b["line"] == 15)
    assert "line 6: skipped" in err.getvalue()
    assert report["counts"] == {"busy": 2, "no-answer": 15, "talked": 1}
    assert all(r["ticket_id"] and r["call_sid"] for r in report["results"])
    assert second == first  # the resumed run called nobody
    assert "18 row(s) already handled" in rerun_err.getvalue()
    assert rerun_code == 1  # the bad rows are still bad


async def test_an_interrupted_campaign_resumes_without_calling_anyone_twice(tmp_path: Path) -> None:
    csv_path = campaign_csv(tmp_path / "numbers.csv")
    state_path = tmp_path / "run.state"
    async with outbound_rig(tmp_path, dialer_options=dialer_options()) as rig:
        campaign, options = prepared(
            rig, "--from-csv", str(csv_path), "--concurrency", "4", "--state", str(state_path)
        )
        run = asyncio.create_task(run_campaign(campaign, options, out=io.StringIO(), err=io.StringIO()))
        async with asyncio.timeout(60):
            while len(created_numbers(rig)) < 6 and not run.done():
                await asyncio.sleep(0.02)
        assert not run.done(), f"the campaign ended before the interrupt: {run.result()}"
        run.cancel()  # what Ctrl-C does to the running calls
        with pytest.raises(asyncio.CancelledError):
            await run
        interrupted = created_numbers(rig)
        resumed, options = prepared(
            rig, "--from-csv", str(csv_path), "--concurrency", "4", "--state", str(state_path)
        )
        out = io.StringIO()
        code = await run_campaign(resumed, options, out=out, err=io.StringIO())
        await rig.settle()
        every = created_numbers(rig)
    assert 6 <= len(interrupted) < 18
    assert Counter(every) == Counter(NUMBERS)  # everyone called, nobody twice
    assert code == 1
    # the calls in flight at the interrupt were watched to their end by the resumed run
    lines = [json.loads(line) for line in state_path.read_text().splitlines()]
    final = {entry["key"]: entry for entry in lines}
    assert len(final) == 18
    assert all(entry["state"] == "done" for entry in final.values())


async def test_one_call_prints_its_outcome_as_json(tmp_path: Path) -> None:
    async with outbound_rig(tmp_path, dialer_options={"default_answer": "busy"}) as rig:
        campaign, options = prepared(rig, "+15559990000", "--context", '{"why": "refund"}', "--json")
        out = io.StringIO()
        code = await run_campaign(campaign, options, out=out, err=io.StringIO())
        await rig.settle()
        result = json.loads(out.getvalue())
        view = await rig.ticket(result["call_sid"])
        assert created_numbers(rig) == ["+15559990000"]
    assert code == 0
    assert result["outcome"] == "busy" and result["state"] == "done"
    assert result["ticket_id"] == view.id
    assert view.context == {"why": "refund"}


def test_the_concurrency_never_exceeds_callbot_max_concurrent_calls(tmp_path: Path) -> None:
    csv_path = tmp_path / "n.csv"
    csv_path.write_text("number\n+15551110000\n", encoding="utf-8")
    args = build_parser().parse_args(["call", "--from-csv", str(csv_path), "--concurrency", "50"])
    _, options = _prepare(args, Settings(max_concurrent_calls=4, _env_file=None))  # type: ignore[call-arg]
    assert options.concurrency == 4


def test_bad_input_is_refused_before_anything_is_placed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from callbot.cli import main

    assert main(["call", "5551234", "--server", "http://127.0.0.1:9"]) == 2
    assert "E.164" in capsys.readouterr().err
    assert main(["call", "+15551234567", "--context", "{oops", "--server", "http://127.0.0.1:9"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    headerless = tmp_path / "x.csv"
    headerless.write_text("+15551234567\n", encoding="utf-8")
    assert main(["call", "--from-csv", str(headerless), "--server", "http://127.0.0.1:9"]) == 2
    assert "'number' column" in capsys.readouterr().err


async def test_a_row_cut_off_mid_request_is_adopted_if_the_server_placed_it_and_placed_if_not(
    tmp_path: Path,
) -> None:
    csv_path = tmp_path / "two.csv"
    csv_path.write_text("number\n+15556660001\n+15556660002\n", encoding="utf-8")
    state_path = tmp_path / "two.state"
    async with outbound_rig(tmp_path, dialer_options={"default_answer": "busy"}) as rig:
        since = "2000-01-01T00:00:00+00:00"
        state_path.write_text(
            "".join(
                json.dumps({"key": f"{line}:{number}", "line": line, "number": number, "state": "placing",
                            "placing_at": since}) + "\n"
                for line, number in ((2, "+15556660001"), (3, "+15556660002"))
            ),
            encoding="utf-8",
        )  # fmt: skip
        # the interrupted run's request for line 2 did reach the server
        placed = (await rig.place("+15556660001")).json()
        campaign, options = prepared(rig, "--from-csv", str(csv_path), "--state", str(state_path), "--json")
        out = io.StringIO()
        code = await run_campaign(campaign, options, out=out, err=io.StringIO())
        await rig.settle()
        numbers = created_numbers(rig)
    assert code == 0
    assert Counter(numbers) == Counter(["+15556660001", "+15556660002"])  # line 2 not called again
    results = {r["line"]: r for r in json.loads(out.getvalue())["results"]}
    assert results[2]["call_sid"] == placed["call_sid"] and results[2]["outcome"] == "busy"
    assert results[3]["outcome"] == "busy"


async def test_a_campaign_waits_for_room_when_the_server_is_at_its_call_limit(tmp_path: Path) -> None:
    csv_path = tmp_path / "five.csv"
    numbers = [f"+1555444{n:04d}" for n in range(5)]
    csv_path.write_text("number\n" + "\n".join(numbers) + "\n", encoding="utf-8")
    options = {"default_answer": "no-answer", "ring_s": 0.6}
    async with outbound_rig(tmp_path, dialer_options=options, max_concurrent_calls=2) as rig:
        campaign, cli = prepared(rig, "--from-csv", str(csv_path), "--concurrency", "5", "--json")
        out = io.StringIO()
        code = await run_campaign(campaign, cli, out=out, err=io.StringIO())
        await rig.settle()
        placed = created_numbers(rig)
        refused = [r for r in rig.rest.requests if r.path.endswith("/Calls.json")]
        max_in_flight = rig.dialer.max_in_flight
    assert code == 0
    assert sorted(placed) == numbers and len(refused) == 5  # a 429 reaches no Twilio API
    assert max_in_flight <= 2
    assert json.loads(out.getvalue())["counts"] == {"no-answer": 5}


async def test_a_server_that_cannot_place_calls_stops_the_campaign_with_its_reason(tmp_path: Path) -> None:
    csv_path = tmp_path / "two.csv"
    csv_path.write_text("number\n+15553330001\n+15553330002\n", encoding="utf-8")
    async with outbound_rig(tmp_path, twilio_account_sid=None) as rig:
        campaign, options = prepared(rig, "--from-csv", str(csv_path))
        err = io.StringIO()
        code = await run_campaign(campaign, options, out=io.StringIO(), err=err)
        creates = created_numbers(rig)
    assert code == 2
    assert "TWILIO_ACCOUNT_SID" in err.getvalue()
    assert creates == []


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr is when a person runs `callbot call`."""

    def isatty(self) -> bool:
        return True


async def test_the_progress_bar_shows_per_outcome_counts_on_a_terminal_and_leaves_json_alone(
    tmp_path: Path,
) -> None:
    numbers = [f"+1555777{n:04d}" for n in range(4)]
    csv_path = tmp_path / "four.csv"
    csv_path.write_text("number\n" + "\n".join(numbers) + "\n", encoding="utf-8")
    answers = {numbers[0]: "busy", numbers[1]: "busy"}
    async with outbound_rig(
        tmp_path, dialer_options={"answers": answers, "default_answer": "no-answer"}
    ) as rig:
        campaign, options = prepared(rig, "--from-csv", str(csv_path), "--concurrency", "2", "--json")
        assert options.show_progress is False  # pytest's stderr is not a terminal: no bar
        plain_out, plain_err = io.StringIO(), io.StringIO()
        assert await run_campaign(campaign, options, out=plain_out, err=plain_err) == 0
        await rig.settle()
        again, options = prepared(
            rig, "--from-csv", str(csv_path), "--concurrency", "2", "--json", "--state", str(tmp_path / "s")
        )
        tty_out, tty_err = io.StringIO(), _Terminal()
        code = await run_campaign(again, replace(options, show_progress=True), out=tty_out, err=tty_err)
        await rig.settle()
    assert code == 0
    bar = tty_err.getvalue()
    assert "4/4" in bar
    assert "busy: 2  no-answer: 2" in bar  # the counts after the last call, in the bar's description
    assert "calls" not in plain_err.getvalue() and "4/4" not in plain_err.getvalue()
    # the JSON report is the same document with or without the bar, and carries no bar text
    plain, shown = json.loads(plain_out.getvalue()), json.loads(tty_out.getvalue())
    assert plain["counts"] == shown["counts"] == {"busy": 2, "no-answer": 2}
    assert (
        sorted(r["number"] for r in plain["results"])
        == sorted(r["number"] for r in shown["results"])
        == numbers
    )
