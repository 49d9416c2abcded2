"""The ports: what the bridge and the ticket service need from the outside world, as Protocols.

The bridge and the services are written against these; the adapters (`callbot/adapters/`)
implement them over real libraries, the simulators and tests implement them with fakes, and
the composition roots (`callbot/compose.py`, `callbot/web/`, the CLI) choose which. This module
imports only core types and the standard library, never an I/O library (openai, websockets,
starlette, sqlalchemy, httpx): importing the bridge therefore imports none of them either. An
import-linter contract in pyproject.toml keeps it that way.

Failures cross a port only as `callbot.errors` exceptions, each documented on its method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from callbot.core.call_control import CallCreate, CallState, CallUpdate, CreatedCall
from callbot.core.call_lifecycle import PlacedCall, StatusUpdate
from callbot.core.memory import EarlierCall, MemorySeed
from callbot.core.record import CallInfo, CallRecord
from callbot.core.summary import SummaryRequest
from callbot.core.ticket import StructuredSummary, TicketStatus
from callbot.core.ticket_views import TicketFilters, TicketPage, TicketView
from callbot.core.tool_config import HttpTool

# ----- one call: the two peers -----


class TwilioLink(Protocol):
    """The caller's side of a call: Twilio Media Streams text frames (adapters/twilio_ws)."""

    async def recv(self) -> str | None:
        """The next text frame, or None once Twilio has gone."""
        ...

    async def send(self, texts: Sequence[str]) -> None:
        """Send these messages in order; a peer that has gone is not an error."""
        ...

    def send_now(self, texts: Sequence[str]) -> bool:
        """`send` without waiting, if the socket can take them now; False: nothing was sent, use `send`."""
        ...

    def offer_to(self, handler: Callable[[str], bool] | None) -> bool:
        """Offer messages to `handler` as they are read, while `recv` waits; True from the
        handler takes a message (`recv` skips it). False: not supported, all go through `recv`."""
        ...

    async def close(self) -> None: ...


class RealtimeLink(Protocol):
    """One open Realtime session, events as plain dicts; failures raise `UpstreamError`."""

    async def send(self, event: dict[str, Any]) -> None: ...

    def send_now(self, event: dict[str, Any]) -> bool:
        """`send` without waiting, if the socket can take it now; False: nothing was sent, use `send`."""
        ...

    async def recv(self) -> dict[str, Any]: ...

    def offer_to(self, handler: Callable[[dict[str, Any]], bool] | None) -> bool:
        """Offer each event to `handler` as it is read while `recv` waits (True: taken, `recv`
        skips it); False if the link cannot (then every event comes through `recv`)."""
        ...

    async def close(self) -> None: ...


class RealtimeConnector(Protocol):
    """Opens Realtime sessions (one per call, again on reconnect); failure raises `UpstreamError`."""

    async def connect(self) -> RealtimeLink: ...


class Summariser(Protocol):
    """Condenses older turns during a call; failure raises `SummaryUnavailable`."""

    async def summarise(self, request: SummaryRequest) -> str: ...


class CallObserver(Protocol):
    """Receives the call's record as it grows: the ticket service implements this."""

    async def call_started(self, record: CallRecord) -> None: ...
    async def call_progress(self, record: CallRecord) -> None: ...
    async def call_ended(self, record: CallRecord) -> int | None: ...


class CallControl(Protocol):
    """Twilio's REST API for calls (adapters/twilio_rest); failures raise `TwilioRestError`,
    and `CallGone` for a call that has already ended."""

    async def update_call(self, call_sid: str, update: CallUpdate) -> None: ...
    async def create_call(self, request: CallCreate) -> CreatedCall: ...
    async def fetch_call(self, call_sid: str) -> CallState: ...
    async def aclose(self) -> None: ...


class CallLog(Protocol):
    """The call's life on its ticket (adapters/store_sql): placements, Twilio's status callbacks,
    answering-machine results; failures raise `StoreUnavailable` (`TicketNotFound` from
    `apply_amd` for a call with no ticket)."""

    async def create_placed_call(self, info: CallInfo, placed: PlacedCall, started_at: datetime) -> int: ...
    async def record_arrival(self, info: CallInfo, arrived_at: datetime) -> int: ...
    async def placed_call(self, call_sid: str) -> PlacedCall | None: ...
    async def apply_status(self, update: StatusUpdate) -> int: ...
    async def apply_amd(self, call_sid: str, answered_by: str, *, voicemail_left: bool = False) -> int: ...
    async def refresh_outcome(self, call_sid: str) -> int | None: ...
    async def calls_awaiting_status(
        self, stream_ended_before: datetime, placed_before: datetime, limit: int = 50
    ) -> Sequence[str]:
        """Calls whose final status callback is overdue (callbot.call_status asks Twilio)."""
        ...


class ToolRunner(Protocol):
    """Runs the agent's HTTP tools (adapters/http_tools); failures and timeouts raise `ToolFailed`."""

    async def run(self, tool: HttpTool, arguments: str) -> str:
        """The tool's JSON answer as text, for the model; `arguments` is the model's JSON text."""
        ...

    async def aclose(self) -> None: ...


class CallerMemory(Protocol):
    """The returning caller's memory for a call that starts (callbot/ticketing.py); never raises,
    and answers within its own short timeout: None means the call starts without memory."""

    async def recall(self, info: CallInfo) -> MemorySeed | None: ...


# ----- tickets -----


class TicketSummariser(Protocol):
    """Turns a finished call into its structured summary; raises `SummaryUnavailable` when it can't."""

    async def summarise(self, record: CallRecord) -> StructuredSummary: ...


class TicketReader(Protocol):
    """The read side of the ticket store (review pages); failures raise `StoreUnavailable`."""

    async def get(self, ticket_id: int) -> TicketView | None: ...
    async def list(self, filters: TicketFilters, page: int = 1, page_size: int = 50) -> TicketPage: ...
    async def calls(self, filters: TicketFilters, limit: int = ...) -> Sequence[TicketView]:
        """Whole tickets for the dashboard's figures, oldest first."""

    async def forget(self, ticket_id: int) -> bool:
        """Exclude the ticket from returning callers' memory; False when there is no such ticket."""
        ...


class MemoryStore(Protocol):
    """The finished tickets a returning caller's memory is built from; failures raise `StoreUnavailable`."""

    async def earlier_calls(self, number: str, since: datetime, limit: int) -> Sequence[EarlierCall]:
        """The number's complete, not forgotten tickets that started at or after `since`, newest first."""
        ...


class TicketStore(Protocol):
    """What the ticket service writes and reads; failures raise `StoreUnavailable`.

    Writes are idempotent per call sid; `complete` and `mark_summary_failed` raise
    `TicketNotFound` for a call with no ticket."""

    async def upsert_call(self, record: CallRecord, status: TicketStatus | str) -> int: ...
    async def complete(self, call_sid: str, summary: StructuredSummary | Mapping[str, Any]) -> int: ...
    async def complete_first(
        self,
        call_sid: str,
        summary: StructuredSummary | Mapping[str, Any],
        *,
        notify_after: datetime | None = None,
    ) -> tuple[int, bool]: ...
    async def webhook_sent(self, ticket_id: int) -> None: ...
    async def webhooks_due(self, now: datetime, retry_at: datetime, limit: int = 50) -> Sequence[int]: ...
    async def mark_summary_failed(self, call_sid: str, error: str) -> int: ...
    async def get(self, ticket_id: int) -> TicketView | None: ...
    async def pending_summaries(self, limit: int = 50) -> Sequence[TicketView]: ...
    async def finish_streamless(
        self, *, started_before: datetime | None = None, call_sids: Sequence[str] = (), limit: int = 200
    ) -> Sequence[int]: ...


class ReplicaLeases(Protocol):
    """Each replica's lease in the shared database (callbot/core/leases.py has the policy);
    failures raise `StoreUnavailable`. Implemented by the SQL ticket store."""

    async def renew_lease(self, replica_id: str, now: datetime) -> None: ...
    async def release_lease(self, replica_id: str) -> None: ...
    async def claim_lost_tickets(
        self, replica_id: str, expired_before: datetime, now: datetime, limit: int = 50
    ) -> Sequence[TicketView]: ...
    async def forget_dead_replicas(self, expired_before: datetime) -> int: ...


class SpooledTicket(Protocol):
    """A ticket waiting on disk for the database."""

    @property
    def call_sid(self) -> str: ...
    @property
    def record(self) -> CallRecord: ...
    @property
    def summary(self) -> dict[str, Any] | None: ...


class TicketSpool(Protocol):
    """Durable local storage for tickets while the database is down (blocking calls: run them
    in a thread); a failed write raises `SpoolError`."""

    def put(self, record: CallRecord, summary: dict[str, Any] | None = None) -> object: ...
    def items(self) -> Sequence[SpooledTicket]: ...
    def remove(self, call_sid: str) -> None: ...


class TicketNotifier(Protocol):
    """Tells someone outside about a finished ticket (adapters/webhook); never raises."""

    async def deliver(self, ticket: dict[str, Any]) -> bool: ...
    async def aclose(self) -> None: ...
