"""What the core asks the bridge to do: the actions `CallSession` returns, performed in order.

Plain frozen values, so a test compares them with `==` and a recorded call replays them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from callbot.core.call_control import CallUpdate
from callbot.core.summary import SummaryRequest
from callbot.core.tool_config import HttpTool


@dataclass(frozen=True, slots=True)
class SendTwilio:
    """One Media Streams message for the caller's stream (docs/protocols.md §4.3)."""

    text: str


@dataclass(frozen=True, slots=True)
class SendRealtime:
    """One client event for the Realtime session, as built by `core/realtime.py`."""

    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConnectRealtime:
    """Open this call's Realtime session, then call `realtime_connected`."""


@dataclass(frozen=True, slots=True)
class ReconnectRealtime:
    """Drop the current Realtime link, wait `delay_ms`, open a new one, then `realtime_connected`."""

    delay_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class EndCall:
    """Close both sides of the call; `reason` goes on the ticket."""

    reason: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A turn completed: persist the transcript so far (a crash leaves a partial ticket)."""


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """Summarise these turns in the background; answer with receive_summary/summary_failed."""

    request: SummaryRequest


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A completed function call item: what the model asked for."""

    call_id: str
    item_id: str
    name: str
    arguments: str
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class RunTool:
    """Action: run this HTTP tool with the call's arguments, then `CallSession.tool_result`."""

    call: FunctionCall
    tool: HttpTool


@dataclass(frozen=True, slots=True)
class UpdateCall:
    """Action: send this REST update for the live call; on failure `CallSession.call_update_failed`.

    `brief` is the text the whisper route speaks to the person who answers a transfer."""

    call_id: str
    update: CallUpdate
    brief: str | None = None


Action = (
    SendTwilio
    | SendRealtime
    | ConnectRealtime
    | ReconnectRealtime
    | EndCall
    | Checkpoint
    | RequestSummary
    | RunTool
    | UpdateCall
)
