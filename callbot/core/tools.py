"""The agent's function calls on one phone call: which run, when their output goes back, and
what `end_call` and `transfer_to_human` do next. No I/O, no clock: `CallSession` feeds it the
Realtime events that matter and the bridge runs what it asks for (`RunTool`, `UpdateCall`).

The rules (docs/call-control.md §6, §2, §3):

- A function call runs only if its item arrived in `response.output_item.done` with status
  `completed` AND its response ended `completed`. A response the caller talked over ends
  `cancelled` (or `incomplete`), and its calls are recorded as skipped, never run: an `end_call`
  from a cancelled response would hang up on a caller who is still talking.
- An HTTP tool runs as a task of the call (the bridge's), so a slow one holds up neither the
  audio nor other calls. Its output (or error, or timeout) goes back as a `function_call_output`
  item at once; the `response.create` that makes the model read it out waits while the caller
  speaks or a response is active (a second one would fail with
  `conversation_already_has_active_response`), and is not sent at all when a response created
  after the output already saw it.
- `end_call` and `transfer_to_human` wait until everything the agent said before them has played
  to the caller: no audio queued, every mark echoed since the last `clear`. Then one REST update:
  `Status=completed`, or TwiML `<Dial>` to the target with a whisper brief. The `stop` that
  follows is the expected end of the stream, and says so on the ticket. The caller talking over
  the goodbye (a `clear`) calls the ending off: the model is told, and the call goes on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any, Literal
from xml.sax.saxutils import escape, quoteattr

from callbot.core import realtime as rt
from callbot.core.actions import Action, FunctionCall, RunTool, SendRealtime, UpdateCall
from callbot.core.call_control import CallUpdate
from callbot.core.conversation import ConversationState
from callbot.core.record import TRANSFERRED_PREFIX, CallInfo, ToolCallEvent, ToolOutcome
from callbot.core.tool_config import END_CALL, TRANSFER, ToolsConfig

log = logging.getLogger("callbot.call")

APPROVAL_NOT_GIVEN = (
    "not run: the MCP server asked for approval, which nobody can give on a phone call "
    "(callbot declares require_approval: never)"
)
REPLY_GRACE_MS = 800
"""After the caller stops speaking the server VAD creates a response itself; a tool output that
lands meanwhile waits this long for it before callbot asks for one."""
BRIEF_MAX_CHARS = 600


@dataclass(frozen=True, slots=True)
class Moment:
    """What the tool logic needs to know about the call right now."""

    now_ms: int
    caller_speaking: bool
    response_active: bool
    audio_drained: bool

    @property
    def busy(self) -> bool:
        return self.caller_speaking or self.response_active


@dataclass(slots=True)
class _Ending:
    call: FunctionCall
    kind: Literal["end", "transfer"]
    reason: str


class ToolCalls:
    """One call's function calls, from the model's item to the ticket's `ToolCallEvent`."""

    def __init__(self, config: ToolsConfig, conversation: ConversationState) -> None:
        self.config = config
        self.conversation = conversation
        self.info: CallInfo | None = None
        self.whisper_url: str | None = None
        """Where the whisper route serves this call's transfer brief (set by the bridge)."""
        self.stop_reason: str | None = None
        """Set once callbot itself ended or redirected the call: what the following `stop` means."""
        self._events: dict[str, ToolCallEvent] = {}
        self._collected: dict[str | None, list[FunctionCall]] = {}
        self._ending: _Ending | None = None
        self._reply_wanted = False
        self._speech_stopped_ms: int | None = None
        self._replies = 0
        self._mcp_lists: dict[str, str] = {}
        """`mcp_list_tools` item id -> its server label (a failed listing names only the item)."""
        self._mcp_started: dict[str, int] = {}
        """`mcp_call` item id -> when OpenAI began calling the server (`response.mcp_call.in_progress`)."""

    # ----- queries -----
    def events(self, now_ms: int | None = None) -> tuple[ToolCallEvent, ...]:
        """Every tool call so far; with `now_ms` (the final record) the unfinished ones say so."""
        if now_ms is None:
            return tuple(self._events.values())
        return tuple(
            e if e.ended_ms is not None or e.outcome == "skipped" else _unfinished(e, now_ms)
            for e in self._events.values()
        )

    @property
    def ending(self) -> bool:
        """An end_call or transfer is waiting for the goodbye to play, or has been sent."""
        return self._ending is not None or self.stop_reason is not None

    # ----- from the Realtime session -----
    def output_item_done(self, item: dict[str, Any], response_id: str | None, now_ms: int) -> None:
        """`response.output_item.done`: a finished function call is kept until its response is done."""
        kind = item.get("type")
        if kind == "mcp_call":
            self._mcp_call(item, now_ms)
            return
        if kind == "mcp_approval_request":
            self._approval_request(item, now_ms)
            return
        if kind != "function_call":
            return
        call = FunctionCall(
            call_id=str(item.get("call_id") or item.get("id") or ""),
            item_id=str(item.get("id") or ""),
            name=str(item.get("name") or ""),
            arguments=str(item.get("arguments") or ""),
            response_id=response_id,
        )
        if item.get("status") != "completed":
            status = item.get("status") or "without a status"
            self._skip(call, f"the function call item ended {status}", now_ms)
            return
        self._collected.setdefault(response_id, []).append(call)

    def item_added(self, item: dict[str, Any], now_ms: int) -> None:
        """`conversation.item.added`: an MCP server's tool list is remembered by its item id, and
        an approval request is recorded (it may come this way only)."""
        kind = item.get("type")
        if kind == "mcp_list_tools":
            self._mcp_lists[str(item.get("id"))] = str(item.get("server_label") or "?")
        elif kind == "mcp_approval_request":
            self._approval_request(item, now_ms)

    def mcp_call_started(self, item_id: str, now_ms: int) -> None:
        """`response.mcp_call.in_progress`: the MCP call's duration starts now (the first such event)."""
        self._mcp_started.setdefault(item_id, now_ms)

    def mcp_list_failed(self, item_id: str) -> str:
        """`mcp_list_tools.failed`: the label of the server whose tools could not be listed."""
        return self._mcp_lists.get(item_id, f"(unknown; listing item {item_id})")

    def response_done(
        self, response_id: str | None, status: str | None, reason: str | None, moment: Moment
    ) -> list[Action]:
        """`response.done`: run the calls of a completed response; skip those of any other."""
        calls = self._collected.pop(response_id, [])
        out: list[Action] = []
        for call in calls:
            if status != "completed":
                why = f"its response was {status or 'not completed'}" + (f" ({reason})" if reason else "")
                self._skip(call, why, moment.now_ms)
                continue
            out.extend(self._start(call, moment))
        out.extend(self.poll(moment))
        return out

    def response_created(self) -> None:
        """A new response sees every output already in the conversation: no extra one is needed."""
        self._reply_wanted = False
        self._speech_stopped_ms = None  # the server's own response for that speech has come

    def speech_stopped(self, now_ms: int) -> None:
        self._speech_stopped_ms = now_ms

    def reply_refused(self, client_event_id: str | None) -> bool:
        """Our `response.create` lost a race with another response: ask again when that one is done."""
        if client_event_id is None or not client_event_id.startswith("evt_tool_reply_"):
            return False
        self._reply_wanted = True
        return True

    def barge_in(self, now_ms: int) -> list[Action]:
        """The caller talked over what the agent said before an end_call/transfer: call it off."""
        ending = self._ending
        if ending is None:
            return []
        self._ending = None
        what = "hang up" if ending.kind == "end" else "transfer"
        message = f"Not done: the caller spoke before you could {what}. Listen to them; the call goes on."
        self._finish(ending.call.call_id, None, message, "error", now_ms)
        self._reply_wanted = True
        return [SendRealtime(rt.function_call_output(ending.call.call_id, json.dumps({"error": message})))]

    # ----- results -----
    def result(
        self, call_id: str, output: str | None, error: str | None, outcome: ToolOutcome, moment: Moment
    ) -> list[Action]:
        """An HTTP tool answered (or failed, or timed out): record it and hand it to the model."""
        event = self._events.get(call_id)
        if event is None or event.ended_ms is not None:
            return []
        self._finish(call_id, output, error, outcome, moment.now_ms)
        if self.stop_reason is not None:
            return []  # the call is being ended or transferred: nobody to tell
        text = output if outcome == "ok" and output is not None else json.dumps({"error": error or outcome})
        self._reply_wanted = True
        return [SendRealtime(rt.function_call_output(call_id, text)), *self.poll(moment)]

    def update_failed(self, call_id: str, error: str, moment: Moment) -> list[Action]:
        """The REST update for an end_call/transfer failed: the call goes on, and the model knows."""
        self.stop_reason = None
        event = self._events.get(call_id)
        if event is None:
            return []
        self._events[call_id] = replace(event, outcome="error", error=error, output=None)
        self._reply_wanted = True
        failed = json.dumps({"error": f"that did not work: {error}"})
        return [SendRealtime(rt.function_call_output(call_id, failed)), *self.poll(moment)]

    # ----- time passes -----
    def poll(self, moment: Moment) -> list[Action]:
        """What is due now: the ending once the goodbye has played, or a held-back reply."""
        ending = self._ending
        if ending is not None:
            if moment.response_active or not moment.audio_drained:
                return []
            self._ending = None
            return [self._execute(ending, moment.now_ms)]
        if not self._reply_wanted or moment.busy or self.stop_reason is not None:
            return []
        stopped = self._speech_stopped_ms
        if stopped is not None and moment.now_ms - stopped < REPLY_GRACE_MS:
            return []
        self._reply_wanted = False
        self._replies += 1
        return [SendRealtime(rt.response_create(event_id=f"evt_tool_reply_{self._replies}"))]

    # ----- inside -----
    def _start(self, call: FunctionCall, moment: Moment) -> list[Action]:
        tool = self.config.http_tool(call.name)
        kind: Literal["http", "builtin"] = "http" if tool is not None else "builtin"
        self._events[call.call_id] = ToolCallEvent(
            call_id=call.call_id,
            item_id=call.item_id,
            name=call.name,
            arguments=call.arguments,
            outcome="ok",
            started_ms=moment.now_ms,
            kind=kind,
        )
        if not self.config.offered(call.name):
            return self.result(call.call_id, None, f"there is no tool named {call.name!r}", "error", moment)
        if tool is not None:
            return [RunTool(call, tool)]
        try:
            args = json.loads(call.arguments or "{}")
        except ValueError:
            args = {}
        reason = str(args.get("reason") or "") if isinstance(args, dict) else ""
        if self.ending:
            return self.result(call.call_id, None, "the call is already being ended", "error", moment)
        self._ending = _Ending(call, "end" if call.name == END_CALL else "transfer", reason)
        return self.poll(moment)

    def _execute(self, ending: _Ending, now_ms: int) -> UpdateCall:
        call_id = ending.call.call_id
        why = ending.reason or "no reason given"
        if ending.kind == "end":
            self.stop_reason = f"agent ended the call: {why}"
            self._finish(call_id, "the call was ended", None, "ok", now_ms)
            return UpdateCall(call_id, CallUpdate(status="completed"))
        target = self.config.transfer_to or ""
        self.stop_reason = f"{TRANSFERRED_PREFIX} ({target}): {why}"
        self._finish(call_id, f"transferred to {target}", None, "ok", now_ms)
        brief = transfer_brief(self.info, self.conversation, ending.reason)
        return UpdateCall(call_id, CallUpdate(twiml=dial_twiml(target, self.whisper_url)), brief)

    def _finish(
        self, call_id: str, output: str | None, error: str | None, outcome: ToolOutcome, now_ms: int
    ) -> None:
        event = self._events.get(call_id)
        if event is not None:
            done = replace(event, output=output, error=error, outcome=outcome, ended_ms=now_ms)
            self._events[call_id] = done

    def _skip(self, call: FunctionCall, why: str, now_ms: int) -> None:
        self._events[call.call_id] = ToolCallEvent(
            call_id=call.call_id,
            item_id=call.item_id,
            name=call.name,
            arguments=call.arguments,
            error=f"not run: {why}",
            outcome="skipped",
            started_ms=now_ms,
            ended_ms=now_ms,
            kind="http" if self.config.http_tool(call.name) else "builtin",
        )

    def _mcp_call(self, item: dict[str, Any], now_ms: int) -> None:
        item_id = str(item.get("id") or "")
        error = item.get("error")
        output = item.get("output")
        self._events[item_id] = ToolCallEvent(
            call_id=item_id,
            item_id=item_id,
            name=f"{item.get('server_label') or 'mcp'}.{item.get('name') or '?'}",
            arguments=str(item.get("arguments") or ""),
            output=output if isinstance(output, str) else None,
            error=json.dumps(error) if error else None,
            outcome="error" if error else "ok",
            started_ms=self._mcp_started.pop(item_id, now_ms),  # without an in_progress: 0 ms
            ended_ms=now_ms,
            kind="mcp",
        )

    def _approval_request(self, item: dict[str, Any], now_ms: int) -> None:
        """An `mcp_approval_request`: with `require_approval: never` it should not come. If it
        does, nobody approves it (no `mcp_approval_response` is sent, so OpenAI runs nothing) and
        the ticket says so; an `mcp_call` that follows anyway is recorded as it comes."""
        item_id = str(item.get("id") or "")
        if item_id in self._events:
            return  # seen already (as an added item, then as a response's output)
        log.warning("an MCP server asked for approval of %s; callbot approves nothing", item.get("name"))
        self._events[item_id] = ToolCallEvent(
            call_id=item_id,
            item_id=item_id,
            name=f"{item.get('server_label') or 'mcp'}.{item.get('name') or '?'}",
            arguments=str(item.get("arguments") or ""),
            error=APPROVAL_NOT_GIVEN,
            outcome="skipped",
            started_ms=now_ms,
            ended_ms=now_ms,
            kind="mcp",
        )


def _unfinished(event: ToolCallEvent, now_ms: int) -> ToolCallEvent:
    if event.name in (END_CALL, TRANSFER):
        return replace(event, outcome="skipped", error="not done: the call ended first", ended_ms=now_ms)
    return replace(event, outcome="error", error="the call ended before the tool answered")


def dial_twiml(target: str, whisper_url: str | None) -> str:
    """`<Dial>` to a number or `sip:` URI, with the whisper brief as the leg's `url` (§3)."""
    noun = "Sip" if target.startswith("sip:") else "Number"
    url = f" url={quoteattr(whisper_url)}" if whisper_url else ""
    return f"<Response><Dial><{noun}{url}>{escape(target)}</{noun}></Dial></Response>"


def whisper_twiml(brief: str) -> str:
    """What the person who answers a transfer hears before the caller is connected (§3)."""
    return f"<Response><Say>{escape(brief)}</Say></Response>"


def transfer_brief(info: CallInfo | None, conversation: ConversationState, reason: str) -> str:
    """Who is calling and what they need: the latest in-call summary if there is one, else the
    reason the agent gave and the caller's last words."""
    who = info.from_number if info is not None and info.from_number else "an unknown number"
    parts = [f"Transferred call from {who}."]
    if reason:
        parts.append(f"They need: {reason.strip().rstrip('.')}.")
    if conversation.summaries:
        parts.append(f"So far: {conversation.summaries[-1].text.strip()}")
    else:
        said = [t.text for t in conversation.turns() if t.role == "user" and t.text]
        if said:
            parts.append("They said: " + " ".join(said[-2:]))
    brief = " ".join(parts)
    return brief if len(brief) <= BRIEF_MAX_CHARS else brief[: BRIEF_MAX_CHARS - 1].rstrip() + "…"
