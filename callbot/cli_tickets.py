"""`callbot tickets ...` and `callbot db upgrade`: tickets from a terminal, and the schema.

Each command builds its own Settings and store, runs one asyncio job and returns the exit code:
0 ok, 1 not found or failed, 2 usage (argparse reports those itself).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO, TypeVar

from sqlalchemy.engine import make_url

from callbot import compose
from callbot.adapters.store_migrate import upgrade_database
from callbot.adapters.store_sql import SqlTicketStore
from callbot.core.cost import CallCost, call_cost
from callbot.core.memory import rememberable_number
from callbot.core.stats import CallStats, compute_stats
from callbot.core.ticket import CATEGORIES, PRIORITIES, TicketStatus, transcript_as_text
from callbot.core.ticket_views import TicketFilters, TicketListItem, TicketView, parse_time_bound
from callbot.errors import FilterError, StoreUnavailable, TicketSchemaError
from callbot.settings import Settings

T = TypeVar("T")
EXPORT_PAGE = 500


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tickets` and `db` commands to the main `callbot` parser."""
    tickets = subparsers.add_parser("tickets", help="list, show, export and retry post-call tickets")
    commands = tickets.add_subparsers(dest="tickets_command", metavar="COMMAND", required=True)

    listing = commands.add_parser("list", help="list tickets, newest call first")
    _add_filters(listing)
    listing.add_argument("--page", type=_positive, default=1)
    listing.add_argument("--page-size", type=_positive, default=50)
    listing.add_argument("--json", action="store_true", help="print the page as JSON")
    listing.set_defaults(func=cmd_list)

    show = commands.add_parser("show", help="show one ticket with its transcript")
    show.add_argument("id", type=_positive, help="ticket id")
    show.add_argument("--json", action="store_true", help="print the ticket as JSON")
    show.set_defaults(func=cmd_show)

    export = commands.add_parser("export", help="export matching tickets as CSV or JSON")
    _add_filters(export)
    export.add_argument("--format", choices=["csv", "json"], default="csv")
    export.add_argument("--output", "-o", metavar="FILE", help="write here instead of standard output")
    export.set_defaults(func=cmd_export)

    stats = commands.add_parser(
        "stats", help="the dashboard's figures: calls per day, durations, mixes, cost, summaries"
    )
    stats.add_argument("--since", type=_date_arg, help="calls started on or after (YYYY-MM-DD or ISO time)")
    stats.add_argument("--until", type=_date_arg, help="calls started before (a bare date includes that day)")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    stats.set_defaults(func=cmd_stats)

    retry = commands.add_parser("retry", help="write spooled tickets and re-run pending summaries now")
    retry.add_argument("--limit", type=_positive, default=500, help="at most this many tickets")
    retry.set_defaults(func=cmd_retry)

    forget = commands.add_parser(
        "forget", help="exclude a ticket from returning callers' memory (it stays in the list)"
    )
    forget.add_argument("id", type=_positive, help="ticket id")
    forget.add_argument("--json", action="store_true", help="print the result as JSON")
    forget.set_defaults(func=cmd_forget)

    purge = commands.add_parser("purge", help="delete every ticket of a caller's number (their history)")
    purge.add_argument("--number", required=True, help="the caller's number, e.g. +15551230000")
    purge.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    purge.add_argument("--json", action="store_true", help="print the result as JSON (needs --yes)")
    purge.set_defaults(func=cmd_purge)

    db = subparsers.add_parser("db", help="ticket database schema")
    db_commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply the database migrations (alembic upgrade head)")
    upgrade.set_defaults(func=cmd_db_upgrade)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", choices=[s.value for s in TicketStatus])
    parser.add_argument("--category", help=f"e.g. {', '.join(CATEGORIES)}")
    parser.add_argument("--priority", help=f"e.g. {', '.join(PRIORITIES)}")
    parser.add_argument("--search", help="words that must all appear (title, summary, transcript, number)")
    parser.add_argument(
        "--since", type=_date_arg, help="calls started on or after (YYYY-MM-DD or ISO time, UTC)"
    )
    parser.add_argument(
        "--until", type=_date_arg, help="calls started before the end of (YYYY-MM-DD) or before"
    )
    parser.add_argument("--number", help="calls from or to this phone number")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _date_arg(text: str) -> str:
    try:
        parse_time_bound("date", text, end_of_day=False)
    except FilterError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (use YYYY-MM-DD or an ISO timestamp)"
        ) from None
    return text


def _filters(args: argparse.Namespace) -> TicketFilters:
    return TicketFilters.from_strings(
        search=args.search, status=args.status, category=args.category, priority=args.priority,
        since=args.since, until=args.until, number=args.number,
    )  # fmt: skip


def _run(settings_work: Callable[[Settings], Coroutine[Any, Any, int]]) -> int:
    """Build the settings, run the job, and turn expected failures into a message and exit 1."""
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError, callbot's SettingsError: both name the variable
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(settings_work(settings))
    except StoreUnavailable as exc:
        print(f"error: ticket database unavailable: {exc}", file=sys.stderr)
        return 1
    except (FilterError, TicketSchemaError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _with_store(settings: Settings, work: Callable[[SqlTicketStore], Awaitable[T]]) -> T:
    store = await SqlTicketStore.open(settings.database_url)
    try:
        return await work(store)
    finally:
        await store.close()


# ----- commands -----


def cmd_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout

    async def work(settings: Settings) -> int:
        filters = _filters(args)
        page = await _with_store(settings, lambda s: s.list(filters, args.page, args.page_size))
        if args.json:
            print(json.dumps(page.to_json(), indent=2, ensure_ascii=False), file=out)
            return 0
        if page.total == 0:
            print("no tickets match", file=out)
            return 0
        print(_table(page.items), file=out)
        print(f"page {page.page} of {page.pages}, {page.total} ticket(s)", file=out)
        return 0

    return _run(work)


def cmd_show(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout

    async def work(settings: Settings) -> int:
        view = await _with_store(settings, lambda s: s.get(args.id))
        if view is None:
            print(f"error: ticket {args.id} not found", file=sys.stderr)
            return 1
        cost = call_cost(view.to_record(), settings.price_table)
        if args.json:
            data = {**view.to_json(), "cost": cost.to_json()}
            print(json.dumps(data, indent=2, ensure_ascii=False), file=out)
        else:
            print(_describe(view, cost), file=out)
        return 0

    return _run(work)


def cmd_stats(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout

    async def work(settings: Settings) -> int:
        try:
            filters = TicketFilters.from_strings(since=args.since, until=args.until)
        except FilterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        views = await _with_store(settings, lambda s: s.calls(filters))
        stats = compute_stats(views, settings.price_table, since=filters.since, until=filters.until)
        if args.json:
            print(json.dumps(stats.to_json(), indent=2, ensure_ascii=False), file=out)
        else:
            print(_describe_stats(stats), file=out)
        return 0

    return _run(work)


def _describe_stats(stats: CallStats) -> str:
    def mix(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} s"

    bounds = [
        f"from {stats.since.isoformat()}" if stats.since else "",
        f"before {stats.until.isoformat()}" if stats.until else "",
    ]
    span = " ".join(b for b in bounds if b) or "all time"
    average_cost = "-" if stats.average_cost_usd is None else f"${stats.average_cost_usd:.4f}"
    lines = [
        f"Calls: {stats.calls} ({span})",
        f"Duration: {secs(stats.total_duration_s)} total, {secs(stats.average_duration_s)} average, "
        f"{secs(stats.longest_duration_s)} longest",
        f"Status: {mix(stats.status_mix)}",
        f"Category: {mix(stats.category_mix)}",
        f"Outcome: {mix(stats.outcome_mix)}",
        f"Open follow-ups: {stats.open_follow_ups}",
        f"Cost: ${stats.total_cost_usd:.4f} total, {average_cost} average "
        f"({stats.priced_calls} priced calls)",
        f"Without summaries: ${stats.cost_without_summaries_usd:.4f} (saved ${stats.saved_usd:.4f})",
        f"Tokens: {stats.tokens_total} total, {stats.tokens_saved} saved by "
        f"{stats.in_call_summaries} in-call summaries",
        f"Summary failures: {stats.summary_failures} failed attempts, "
        f"{stats.tickets_with_failed_summary} tickets without a summary after one",
        "Calls per day:",
    ]
    lines += [f"  {day}  {n:4d} {'#' * min(n, 60)}" for day, n in stats.calls_per_day] or ["  (none)"]
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace, out: TextIO | None = None) -> int:
    async def work(settings: Settings) -> int:
        filters = _filters(args)

        async def collect(store: SqlTicketStore) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            page_no = 1
            while True:
                page = await store.list(filters, page_no, EXPORT_PAGE)
                for item in page.items:
                    if args.format == "json":
                        view = await store.get(item.id)
                        if view is not None:
                            rows.append(view.to_json())
                    else:
                        rows.append(_csv_row(item))
                if page_no >= page.pages:
                    return rows
                page_no += 1

        rows = await _with_store(settings, collect)
        text = json.dumps(rows, indent=2, ensure_ascii=False) + "\n" if args.format == "json" else _csv(rows)
        if args.output:
            await asyncio.to_thread(Path(args.output).write_text, text, encoding="utf-8", newline="")
            print(f"exported {len(rows)} ticket(s) to {args.output}", file=sys.stderr)
        else:
            (out or sys.stdout).write(text)
        return 0

    return _run(work)


def cmd_retry(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout

    async def work(settings: Settings) -> int:
        if settings.openai_api_key is None:
            print("error: OPENAI_API_KEY is not set; summaries cannot be retried", file=sys.stderr)
            return 1
        client = compose.openai_client(settings)
        store = await SqlTicketStore.open(settings.database_url)
        service = compose.build_ticket_service(settings, store, client)
        try:
            flushed = await service.flush_spool()
            if flushed:
                print(f"wrote {flushed} spooled ticket(s) to the database", file=out)
            pending = await store.pending_summaries(args.limit)
            if not pending:
                print("no tickets are waiting for a summary", file=out)
            failures = 0
            for view in pending:
                done = await service.retry_ticket(view)
                after = await store.get(view.id)
                if done and after is not None:
                    print(
                        f"ticket {view.id} ({view.call_sid}): complete - {after.item.title}",
                        file=out,
                        flush=True,
                    )
                else:
                    failures += 1
                    reason = after.item.last_error if after else "ticket vanished"
                    print(
                        f"ticket {view.id} ({view.call_sid}): still pending - {reason}", file=out, flush=True
                    )
            return 1 if failures else 0
        finally:
            await service.aclose()
            await store.close()
            await client.close()

    return _run(work)


def cmd_forget(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout

    async def work(settings: Settings) -> int:
        found = await _with_store(settings, lambda s: s.forget(args.id))
        if not found:
            print(f"error: ticket {args.id} not found", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps({"id": args.id, "memory_excluded": True}), file=out)
        else:
            print(f"ticket {args.id} will not seed returning callers' memory any more", file=out)
        return 0

    return _run(work)


def cmd_purge(
    args: argparse.Namespace, out: TextIO | None = None, confirm: Callable[[str], str] | None = None
) -> int:
    """Exit 0 when deleted (or nothing to delete), 1 on a failure or a declined prompt."""
    out = out or sys.stdout
    number = rememberable_number(args.number) or args.number.strip()
    if not number:
        print("error: --number is empty", file=sys.stderr)
        return 2
    if args.json and not args.yes:
        print("error: --json needs --yes (there is no prompt to answer)", file=sys.stderr)
        return 2

    async def work(settings: Settings) -> int:
        async def purge(store: SqlTicketStore) -> int | None:
            count = await store.count_number(number)
            if count and not args.yes:
                ask = confirm or input
                answer = await asyncio.to_thread(
                    ask, f"delete {count} ticket(s) of calls from {number}? This cannot be undone. [y/N] "
                )
                if answer.strip().lower() not in ("y", "yes"):
                    return None
            return await store.purge_number(number) if count else 0

        deleted = await _with_store(settings, purge)
        if deleted is None:
            print("nothing deleted", file=out)
            return 1
        if args.json:
            print(json.dumps({"number": number, "deleted": deleted}), file=out)
        else:
            print(f"deleted {deleted} ticket(s) of calls from {number}", file=out)
        return 0

    return _run(work)


def cmd_db_upgrade(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout

    async def work(settings: Settings) -> int:
        revision = await upgrade_database(settings.database_url)
        shown = make_url(settings.database_url).render_as_string(hide_password=True)
        print(f"ticket database {shown} is at revision {revision}", file=out)
        return 0

    return _run(work)


# ----- formatting -----


def _table(items: list[TicketListItem]) -> str:
    header = ("ID", "STARTED (UTC)", "STATUS", "CATEGORY", "PRIORITY", "FROM", "TITLE")
    rows = [_table_row(t) for t in items]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


def _table_row(t: TicketListItem) -> tuple[str, ...]:
    title = _clip(t.title or "(no summary yet)", 60)
    started = t.started_at.strftime("%Y-%m-%d %H:%M")
    return (str(t.id), started, t.status, t.category or "-", t.priority or "-", t.from_number or "-", title)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _describe(view: TicketView, cost: CallCost) -> str:
    t, s = view.item, view.item.summary or {}
    tags = [
        t.status,
        t.category,
        t.priority and f"priority {t.priority}",
        t.sentiment and f"sentiment {t.sentiment}",
    ]
    if t.follow_up_needed:
        tags.append("follow-up needed")
    duration = f"{t.duration_s:.0f} s" if t.duration_s is not None else "still running"
    usage = view.usage
    started = t.started_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"Ticket {t.id} · " + " · ".join(tag for tag in tags if tag),
        f"Title: {t.title or '(no summary yet)'}",
        f"Call: {t.from_number or 'unknown'} -> {t.to_number or 'unknown'}, started {started}, "
        f"{duration}, ended: {view.end_reason or '-'}",
        f"Call SID: {t.call_sid}",
        f"Tokens: {usage.input_tokens} in, {usage.output_tokens} out, {usage.total_tokens} total",
        _describe_cost(cost),
    ]
    life = view.lifecycle
    if life.twilio_status or view.direction != "inbound":
        twilio = f"Twilio {life.twilio_status or 'unknown'}" + (
            f", {life.duration_s} s" if life.duration_s is not None else ""
        )
        answered = f", answered by {life.answered_by}" if life.answered_by else ""
        lines.append(f"Lifecycle: {view.direction}, {twilio}{answered}, outcome {view.outcome or '-'}")
    if view.instructions or view.context:
        lines.append(f"Placed with: {view.instructions or '-'}; context {view.context or '-'}")
    if t.last_error and not t.summary:
        lines.append(f"Last summary error ({t.summary_attempts} attempts): {t.last_error}")
    if s:
        lines += ["", f"Summary: {s.get('summary', '')}"]
        for key, label in (("caller_request", "Caller's request"), ("outcome", "Outcome")):
            if s.get(key):
                lines.append(f"{label}: {s[key]}")
        for a in s.get("action_items") or []:
            extra = ", ".join(x for x in (a.get("owner"), a.get("due") and f"due {a['due']}") if x)
            lines.append(f"Action: {a.get('description', '')}" + (f" ({extra})" if extra else ""))
        for f in s.get("facts") or []:
            lines.append(f"Fact: {f.get('label', '')}: {f.get('value', '')}")
    lines += ["", "Transcript:", transcript_as_text(view.to_record()) or "(nothing was said)"]
    return "\n".join(lines)


def _describe_cost(cost: CallCost) -> str:
    k = cost.tokens
    tokens = (
        f"text {k.text_input} in / {k.text_cached} cached / {k.text_output} out; "
        f"audio {k.audio_input} in / {k.audio_cached} cached / {k.audio_output} out"
    )
    if cost.cost_usd is None or cost.cost_without_summaries_usd is None:
        return f"Cost: no price for {cost.model or 'the model'} ({tokens})"
    return (
        f"Cost: ${cost.cost_usd:.4f} estimated, ${cost.cost_without_summaries_usd:.4f} without summaries "
        f"({cost.tokens_saved} input tokens saved) ({tokens})"
    )


CSV_COLUMNS = (
    "id", "call_sid", "started_at", "ended_at", "duration_s", "status", "from_number", "to_number",
    "category", "priority", "sentiment", "follow_up_needed", "title", "summary", "caller_request",
    "outcome", "action_items", "facts", "summary_attempts", "last_error",
)  # fmt: skip

_SAFE_NUMBER = re.compile(r"^[+-]?[\d\s().-]*$")


def _csv_row(item: TicketListItem) -> dict[str, Any]:
    s = item.summary or {}
    row = item.to_json()
    row.update(
        summary=s.get("summary", ""),
        caller_request=s.get("caller_request", ""),
        outcome=s.get("outcome", ""),
        action_items="; ".join(str(a.get("description", "")) for a in s.get("action_items") or []),
        facts="; ".join(f"{f.get('label', '')}: {f.get('value', '')}" for f in s.get("facts") or []),
    )
    return {k: row.get(k) for k in CSV_COLUMNS}


def _csv_cell(value: Any) -> Any:
    # Callers' words end up in spreadsheets: a cell starting with = + - @ would run as a formula.
    if (
        isinstance(value, str)
        and value[:1] in ("=", "+", "-", "@", "\t", "\r")
        and not _SAFE_NUMBER.match(value)
    ):
        return "'" + value
    return "" if value is None else value


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    return buffer.getvalue()
