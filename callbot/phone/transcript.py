"""The live transcript of `callbot phone`: the call's ticket, followed through the server's API."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from callbot.core.transcript_text import context_change_text
from callbot.phone.console import Console

POLL_INTERVAL_S = 0.5
TICKET_WAIT_S = 30.0
"""After hang-up, how long to wait for the server to finish the ticket (final transcript, summary)."""

ROLE_NAMES = {"user": "caller", "assistant": "assistant", "system": "system"}


@dataclass
class TranscriptWatcher:
    """Shows the call's ticket as the server saves it (after every turn): new lines, summaries.

    Reads `/api/tickets?call_sid=...` once to find the ticket, then `/api/tickets/{id}`.
    Transient failures are retried quietly; a refused login or a server without the review API
    turns the live transcript off with one line saying so.
    """

    client: httpx.AsyncClient
    call_sid: str
    console: Console
    interval_s: float = POLL_INTERVAL_S
    ticket_id: int | None = None
    status: str | None = None
    title: str | None = None
    enabled: bool = True
    printed: set[str] = field(default_factory=set)
    summaries: set[str] = field(default_factory=set)
    _unreachable: bool = field(default=False, init=False)

    def off(self, why: str) -> None:
        if self.enabled:
            self.enabled = False
            self.console.line(f"live transcript off: {why}")

    async def run(self) -> None:
        while self.enabled:
            await self.poll()
            await asyncio.sleep(self.interval_s)

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any | None:
        try:
            response = await self.client.get(path, params=params)
        except httpx.HTTPError as exc:
            if not self._unreachable:
                self._unreachable = True
                self.console.line(f"live transcript: ticket API unreachable for now ({type(exc).__name__})")
            return None
        self._unreachable = False
        if response.status_code == 401:
            self.off("the server refused the admin login (check --admin-user/--admin-password)")
            return None
        if response.status_code == 404 and self.ticket_id is None:
            self.off("the server's ticket API is off (set CALLBOT_ADMIN_PASSWORD on the server)")
            return None
        if response.status_code != 200:
            return None  # 503 while the database is down, 404 for a moment: try again later
        try:
            return response.json()
        except ValueError:
            return None

    async def poll(self) -> None:
        """One look at the ticket; prints whatever is new."""
        if not self.enabled:
            return
        if self.ticket_id is None:
            page = await self._get("/api/tickets", {"call_sid": self.call_sid, "page_size": "20"})
            items = page.get("items", []) if isinstance(page, dict) else []
            # A server without the call_sid filter ignores it: match the sid here as well.
            mine = [i for i in items if isinstance(i, dict) and i.get("call_sid") == self.call_sid]
            if not mine:
                return
            self.ticket_id = int(mine[0]["id"])
            self.console.line(f"ticket #{self.ticket_id} opened for this call")
        ticket = await self._get(f"/api/tickets/{self.ticket_id}")
        if isinstance(ticket, dict):
            self.show(ticket, final=False)

    def show(self, ticket: dict[str, Any], *, final: bool) -> None:
        self.status = ticket.get("status")
        self.title = ticket.get("title")
        entries = [e for e in ticket.get("transcript") or [] if isinstance(e, dict)]
        usage = ticket.get("usage") or {}
        responses_done = int(usage.get("responses") or 0)
        replies = sum(1 for e in entries if e.get("role") == "assistant")
        for index, entry in enumerate(entries):
            item_id = str(entry.get("item_id"))
            if item_id in self.printed:
                continue
            text = entry.get("text")
            # Saved mid-reply, the newest assistant line may still be growing: it is finished once
            # something follows it, it was interrupted, or every reply so far has its response.done.
            settled = (
                final
                or entry.get("role") != "assistant"
                or index < len(entries) - 1
                or bool(entry.get("interrupted"))
                or responses_done >= replies
            )
            if not settled or (text is None and entry.get("status") != "failed" and not final):
                continue  # still being spoken, or its transcript is on its way
            self.printed.add(item_id)
            role = str(entry.get("role"))
            who = ROLE_NAMES.get(role, role)
            flag = ""
            if entry.get("interrupted"):
                heard = entry.get("heard_ms")
                flag = f" [interrupted after {heard / 1000:.1f} s]" if heard is not None else " [interrupted]"
            self.console.line(f"{who}: {text if text is not None else '(no transcript)'}{flag}")
        for summary in ticket.get("in_call_summaries") or []:
            summary_id = str(summary.get("summary_id"))
            if summary_id in self.summaries:
                continue
            self.summaries.add(summary_id)
            after = summary.get("tokens_after")
            change = context_change_text(
                int(summary.get("tokens_before") or 0), after if isinstance(after, int) else None
            )
            self.console.line(
                f"summary inserted at {summary.get('at_ms', 0) / 1000:.1f}s of the call: folded "
                f"{summary.get('turns_folded')} turns, {change}"
            )

    async def finish(self, wait_s: float = TICKET_WAIT_S) -> None:
        """After hang-up: follow the ticket until the server has completed it (or `wait_s` passes)."""
        deadline = time.monotonic() + wait_s
        announced = False
        while self.enabled and time.monotonic() < deadline:
            await self.poll()
            if self.status == "complete":
                break
            if self.status == "pending_summary" and not announced:
                announced = True
                self.console.line("waiting for the ticket's summary ...")
            await asyncio.sleep(self.interval_s)
        if self.enabled and self.ticket_id is not None:
            ticket = await self._get(f"/api/tickets/{self.ticket_id}")
            if isinstance(ticket, dict):
                self.show(ticket, final=True)
