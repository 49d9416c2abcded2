"""`callbot call`: place one call, or a campaign from a CSV, through a running server's API.

The server does the calling (`POST /api/calls`, web/calls.py); this command is its client. It
checks what it can before anything rings (numbers, context, the CSV's rows), places calls with
at most `--concurrency` in flight (and never more than `CALLBOT_MAX_CONCURRENT_CALLS`), waits for
each call's final status by polling the call's ticket (`GET /api/tickets/{id}`), and keeps a
state file so an interrupted campaign resumes without calling anyone twice (core/campaign.py;
a request cut off by the interrupt is settled by asking the server for a call to that number).

Exit codes: 0 every call was placed and finished; 1 a row was bad, a call could not be placed
or did not finish in time; 2 bad usage or input, nothing placed; 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

from callbot.core.call_lifecycle import CallRequest, call_request
from callbot.core.campaign import (
    CampaignRow,
    CampaignState,
    RowError,
    RowState,
    outcome_counts,
    parse_campaign_csv,
)
from callbot.errors import InvalidCallRequest
from callbot.settings import Settings

RETRY_BUSY_S = 1.0
"""How long to wait before placing again when the server answers 429 (its call limit)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "call",
        help="place an outbound call, or one per row of a CSV, through a running callbot server",
        description="Place an outbound call through a running callbot server (POST /api/calls) and "
        "wait for its outcome; or, with --from-csv, one call per row with at most --concurrency in "
        "flight, resumable after Ctrl-C.",
    )
    parser.add_argument("number", nargs="?", help="the number to call, E.164 (e.g. +15551234567)")
    why = parser.add_mutually_exclusive_group()
    why.add_argument("--instructions", metavar="TEXT", help="why the agent calls and what to do")
    why.add_argument("--instructions-file", metavar="FILE", type=Path, help="the instructions, from a file")
    parser.add_argument(
        "--context", metavar="JSON", help='facts for the agent, a JSON object: {"order": "4417"}'
    )
    parser.add_argument(
        "--from", dest="from_", metavar="NUMBER", help="call from this number (default: the server's)"
    )
    parser.add_argument(
        "--from-csv", metavar="FILE", type=Path, help="a campaign: columns number, instructions, context"
    )
    parser.add_argument(
        "--concurrency", type=_positive, default=1, help="calls in flight at once (default 1)"
    )
    parser.add_argument(
        "--state", metavar="FILE", type=Path, help="campaign state (default: FILE.state.jsonl)"
    )
    parser.add_argument(
        "--server", default="http://127.0.0.1:8080", help="the callbot server (default %(default)s)"
    )
    parser.add_argument("--admin-user", default=None, help="API user (default CALLBOT_ADMIN_USER)")
    parser.add_argument(
        "--admin-password", default=None, help="API password (default CALLBOT_ADMIN_PASSWORD)"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="return once placed; do not wait for the outcome"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for a call's outcome")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between ticket polls")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(func=cmd_call)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


@dataclass
class CallOptions:
    server: str
    auth: tuple[str, str] | None
    concurrency: int = 1
    wait: bool = True
    timeout_s: float = 1800.0
    poll_s: float = 1.0
    json_output: bool = False
    show_progress: bool = True


@dataclass
class Campaign:
    """One run: the rows to place, the state file, and what happened."""

    rows: list[CampaignRow]
    bad: list[RowError]
    state: CampaignState
    state_path: Path | None
    results: list[RowState] = field(default_factory=list)

    def save(self, row: RowState) -> None:
        line = self.state.record(row)
        if self.state_path is None:
            return
        with self.state_path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())  # written before the call is placed: a crash cannot forget it


def cmd_call(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
        campaign, options = _prepare(args, settings)
    except (InvalidCallRequest, OSError, ValueError) as exc:
        print(f"callbot call: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_campaign(campaign, options))
    except KeyboardInterrupt:
        handled = len(campaign.state.rows)
        where = f" (state in {campaign.state_path})" if campaign.state_path else ""
        print(
            f"\ncallbot call: interrupted with {handled} row(s) handled{where}; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130


def _prepare(args: argparse.Namespace, settings: Settings) -> tuple[Campaign, CallOptions]:
    user = args.admin_user or settings.admin_user
    password = args.admin_password or (
        settings.admin_password.get_secret_value() if settings.admin_password else None
    )
    options = CallOptions(
        server=args.server.rstrip("/"),
        auth=(user, password) if password else None,
        concurrency=min(args.concurrency, settings.max_concurrent_calls),
        wait=not args.no_wait,
        timeout_s=args.timeout,
        poll_s=args.poll_interval,
        json_output=args.json,
        show_progress=sys.stderr.isatty(),
    )
    if args.from_csv is not None:
        if args.number or args.instructions or args.instructions_file or args.context:
            raise InvalidCallRequest("--from-csv takes the numbers, instructions and context from the CSV")
        rows, bad = parse_campaign_csv(args.from_csv.read_text(encoding="utf-8-sig"), from_=args.from_)
        state_path = args.state or args.from_csv.with_name(args.from_csv.name + ".state.jsonl")
        lines = state_path.read_text(encoding="utf-8").splitlines() if state_path.exists() else []
        return Campaign(rows, bad, CampaignState.from_lines(lines), state_path), options
    if not args.number:
        raise InvalidCallRequest("give a number to call, or --from-csv FILE")
    instructions = args.instructions
    if args.instructions_file is not None:
        instructions = args.instructions_file.read_text(encoding="utf-8")
    request = call_request(args.number, from_=args.from_, instructions=instructions, context=args.context)
    return Campaign([CampaignRow(0, request)], [], CampaignState(), args.state), options


async def run_campaign(
    campaign: Campaign, options: CallOptions, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Place the campaign's calls, at most `options.concurrency` at once; the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    for bad in campaign.bad:
        print(f"line {bad.line}: skipped: {bad.message}", file=err)
    todo = campaign.state.to_place(campaign.rows)
    skipped = len(campaign.rows) - len(todo)
    if skipped:
        print(
            f"{skipped} row(s) already handled by an earlier run (state file); not calling them again",
            file=err,
        )
    gate = asyncio.Semaphore(options.concurrency)
    client = httpx.AsyncClient(base_url=options.server, auth=options.auth, timeout=30.0, trust_env=False)
    async with client as http:
        by_key = {row.key: row for row in campaign.rows}
        request_ids: dict[str, str] = {}
        for unsure in campaign.state.to_check():
            if not await _adopt(http, campaign, unsure) and unsure.key in by_key:
                # No ticket yet: never placed, or still being placed. Asking again under the same
                # request id places it or joins the placement still in flight (web/calls.py).
                todo.append(by_key[unsure.key])
                if unsure.request_id:
                    request_ids[unsure.key] = unsure.request_id
        watch = campaign.state.to_watch()
        progress = _Progress(len(todo) + len(watch), options.show_progress, err)

        async def one(row: CampaignRow) -> None:
            async with gate:
                result = await _place_and_wait(http, campaign, row, options, request_ids.get(row.key))
            _report(result, options, out)
            progress.advance(campaign.results)

        async def resumed(row: RowState) -> None:
            async with gate:
                result = await _wait(http, campaign, row, options)
            _report(result, options, out)
            progress.advance(campaign.results)

        fatal: list[BaseException] = []
        with progress:
            try:
                async with asyncio.TaskGroup() as tasks:
                    for old in watch:
                        tasks.create_task(resumed(old))
                    for row in todo:
                        tasks.create_task(one(row))
            except* _Fatal as group:
                fatal.extend(group.exceptions)
        if fatal:
            print(f"callbot call: {fatal[0]}", file=err)
            return 2
    counts = outcome_counts(campaign.results)
    if options.json_output:
        document: dict[str, Any] = {
            "results": [r.to_json() for r in campaign.results],
            "bad_rows": [{"line": b.line, "error": b.message} for b in campaign.bad],
            "counts": counts,
        }
        if len(campaign.rows) == 1 and campaign.rows[0].line == 0 and campaign.results:
            document = campaign.results[0].to_json()
        print(json.dumps(document, indent=2), file=out)
    elif len(campaign.results) > 1 or campaign.bad:
        print("outcomes: " + ", ".join(f"{k} {v}" for k, v in counts.items()), file=err)
    failed = any(r.state == "failed" for r in campaign.results)
    return 1 if failed or campaign.bad else 0


class _Fatal(Exception):
    """The server refused us in a way no other row would fare better with (login, no Twilio)."""


async def _adopt(http: httpx.AsyncClient, campaign: Campaign, row: RowState) -> bool:
    """For a row left `placing`: did the server place a call to its number since? Then that call
    is this row's (marked `placed`, to be watched). False if the server has none."""
    params = {"search": row.number, "page_size": "20"}
    if row.placing_at:
        params["since"] = row.placing_at
    try:
        reply = await http.get("/api/tickets", params=params)
        reply.raise_for_status()
        items = reply.json()["items"]
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        raise _Fatal(f"cannot ask the server whether line {row.line} was called: {exc}") from exc
    mine = [item for item in items if item.get("to_number") == row.number]
    if not mine:
        return False
    found = min(mine, key=lambda item: item["started_at"])
    row.state, row.call_sid, row.ticket_id = "placed", found["call_sid"], found["id"]
    campaign.save(row)
    return True


async def _place_and_wait(
    http: httpx.AsyncClient,
    campaign: Campaign,
    row: CampaignRow,
    options: CallOptions,
    request_id: str | None = None,
) -> RowState:
    at = datetime.now(UTC).isoformat()
    request_id = request_id or secrets.token_hex(16)
    state = RowState(key=row.key, line=row.line, number=row.request.to, placing_at=at, request_id=request_id)
    campaign.save(state)  # before the call is placed (core/campaign.py)
    while True:
        try:
            reply = await http.post("/api/calls", json={**_body(row.request), "request_id": request_id})
        except httpx.HTTPError as exc:
            return _finish(campaign, state, error=f"server unreachable: {exc}")
        if reply.status_code == 429:  # the server's call limit: nothing was placed, try again
            await asyncio.sleep(RETRY_BUSY_S)
            continue
        break
    if reply.status_code in (401, 403, 404):
        raise _Fatal(f"the server refused the API login (HTTP {reply.status_code}): check --admin-password")
    if reply.status_code != 201:
        message = _error_text(reply)
        if reply.status_code == 503 and "set " in message:
            raise _Fatal(message)
        return _finish(campaign, state, error=f"HTTP {reply.status_code}: {message}")
    placed = reply.json()
    state.state, state.call_sid, state.ticket_id = "placed", placed["call_sid"], placed["ticket_id"]
    campaign.save(state)
    if not options.wait:
        campaign.results.append(state)
        return state
    return await _wait(http, campaign, state, options)


async def _wait(
    http: httpx.AsyncClient, campaign: Campaign, state: RowState, options: CallOptions
) -> RowState:
    """Poll the call's ticket until Twilio's final status has given it an outcome."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.timeout_s
    while loop.time() < deadline:
        try:
            reply = await http.get(f"/api/tickets/{state.ticket_id}")
            ticket = reply.json() if reply.status_code == 200 else {}
        except (httpx.HTTPError, json.JSONDecodeError):
            ticket = {}
        if ticket.get("outcome") and ticket.get("status") != "in_progress":
            state.state, state.outcome = "done", str(ticket["outcome"])
            campaign.save(state)
            campaign.results.append(state)
            return state
        await asyncio.sleep(options.poll_s)
    return _finish(campaign, state, error=f"no final status within {options.timeout_s:g} s")


def _finish(campaign: Campaign, state: RowState, *, error: str) -> RowState:
    state.state, state.error = "failed", error
    campaign.save(state)
    campaign.results.append(state)
    return state


def _body(request: CallRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"to": request.to}
    if request.from_:
        body["from"] = request.from_
    if request.instructions:
        body["instructions"] = request.instructions
    if request.context is not None:
        body["context"] = dict(request.context)
    return body


def _error_text(reply: httpx.Response) -> str:
    try:
        return str(reply.json().get("error") or reply.text)
    except (json.JSONDecodeError, AttributeError):
        return reply.text[:300]


def _report(row: RowState, options: CallOptions, out: TextIO) -> None:
    if options.json_output:
        return
    where = f"line {row.line}: " if row.line else ""
    if row.state == "failed":
        print(f"{where}{row.number}: not completed: {row.error}", file=out)
        return
    ticket = f"ticket #{row.ticket_id}" if row.ticket_id is not None else ""
    what = row.outcome or row.state
    print(f"{where}{row.number}: {what} (call {row.call_sid}, {ticket})", file=out)


class _Progress:
    """A rich progress bar on the terminal with per-outcome counts; nothing when not a terminal."""

    def __init__(self, total: int, enabled: bool, err: TextIO) -> None:
        self._bar: Any = None
        self._task: Any = None
        if enabled and total > 1:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("calls"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=Console(file=err),
            )
            self._task = self._bar.add_task("", total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, results: list[RowState]) -> None:
        if self._bar is not None:
            counts = "  ".join(f"{k}: {v}" for k, v in outcome_counts(results).items())
            self._bar.update(self._task, advance=1, description=counts)
