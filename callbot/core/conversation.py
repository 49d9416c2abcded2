"""One call's conversation: every turn, in order, with transcripts and token usage.

Two views are kept. `context` mirrors the items the Realtime server currently holds (summaries
included), in the server's order; it shrinks when items are deleted. The log keeps every turn of
the call forever, so the ticket shows the whole call even after older turns were folded into a
summary. The invariant that ties them: every turn is either still in the context verbatim or
names the summary (inserted into the context) that covers it.

Caller transcripts are produced asynchronously and often arrive after the assistant's reply
(docs/protocols.md §10.6), so order comes from `previous_item_id`, never from arrival time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from callbot.core.record import (
    ResponseUsage,
    Role,
    SummaryEvent,
    TranscriptEntry,
    TranscriptStatus,
    UsageTotals,
)


@dataclass(slots=True)
class Turn:
    item_id: str
    role: Role
    at_ms: int
    kind: str = "message"
    done: bool = False
    text: str | None = None
    transcript_status: TranscriptStatus = "complete"
    interrupted: bool = False
    heard_ms: int | None = None
    full_text: str | None = None
    summary_id: str | None = None
    in_context: bool = True
    is_summary: bool = False
    is_memory: bool = False
    started_ms: int | None = None
    ended_ms: int | None = None
    _deltas: list[str] = field(default_factory=list)

    def entry(self) -> TranscriptEntry:
        return TranscriptEntry(
            item_id=self.item_id,
            role=self.role,
            text=self.text,
            status=self.transcript_status,
            interrupted=self.interrupted,
            at_ms=self.at_ms,
            heard_ms=self.heard_ms,
            summary_id=self.summary_id,
            started_ms=self.started_ms,
            ended_ms=self.ended_ms,
        )


def _cut_to_heard(text: str, heard_ms: int, generated_ms: int) -> str:
    """The part of an assistant transcript the caller heard, cut at a word boundary.

    The transcript is not time-aligned, so this assumes an even speaking rate: good enough
    for a person reading the ticket, and it never claims more than was played.
    """
    if heard_ms <= 0:
        return ""
    if generated_ms <= 0 or heard_ms >= generated_ms:
        return text
    keep = int(len(text) * heard_ms / generated_ms)
    if keep >= len(text):
        return text
    cut = text[:keep]
    if text[keep] != " ":
        cut = cut[: cut.rfind(" ")] if " " in cut else ""  # never end inside a word
    cut = cut.rstrip()
    return cut + "…" if cut else ""


def _content_text(item: dict[str, Any]) -> str | None:
    """Text carried by a GA message item: input_text/output_text, or an audio part's transcript."""
    parts = item.get("content") or []
    texts = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        value = (
            part.get("text") if part.get("type") in ("input_text", "output_text") else part.get("transcript")
        )
        if isinstance(value, str) and value:
            texts.append(value)
    return " ".join(texts) if texts else None


def _tool_text(item: dict[str, Any]) -> str | None:
    kind = item.get("type")
    if kind == "function_call":
        return f"[The agent called the tool {item.get('name')} with {item.get('arguments') or '{}'}]"
    if kind == "function_call_output":
        return f"[The tool answered: {item.get('output') or ''}]"
    if kind == "mcp_call":
        answer = item.get("output") if item.get("output") is not None else item.get("error")
        return f"[The agent called {item.get('server_label')}.{item.get('name')}; it answered: {answer}]"
    return None


def _count(value: Any) -> int:
    """A token count from the server's JSON: a non-negative int, anything else counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


PENDING_SPEECH_KEPT = 8
"""Caller speech spans waiting for their item; a real one waits a second at most."""


class ConversationState:
    """The per-call conversation record. Plain data plus transitions; no I/O, no clock."""

    def __init__(self) -> None:
        self._turns: dict[str, Turn] = {}
        self._log: list[str] = []
        self.context: list[str] = []
        self.summaries: list[SummaryEvent] = []
        self.usage = UsageTotals()
        self.last_usage: dict[str, Any] | None = None
        self.response_usages: list[ResponseUsage] = []
        # caller speech seen by the VAD before its item exists: item id -> [started, stopped]
        self._speech: dict[str, list[int | None]] = {}

    # ----- queries -----
    def get(self, item_id: str) -> Turn | None:
        return self._turns.get(item_id)

    def turns(self) -> list[Turn]:
        """Every non-summary turn of the call, in conversation order."""
        return [self._turns[i] for i in self._log]

    def context_turns(self) -> list[Turn]:
        """Turns the server still holds verbatim (summary and memory items excluded), in order."""
        return [t for i in self.context if not ((t := self._turns[i]).is_summary or t.is_memory)]

    def summary_items(self) -> list[Turn]:
        return [t for i in self.context if (t := self._turns[i]).is_summary]

    def memory_item(self) -> Turn | None:
        """The returning caller's memory message, while the server holds it (core/memory.py)."""
        return next((t for i in self.context if (t := self._turns[i]).is_memory), None)

    @property
    def context_tokens(self) -> int:
        return self.usage.last_context_tokens

    def transcript(self) -> tuple[TranscriptEntry, ...]:
        return tuple(t.entry() for t in self.turns())

    # ----- server item lifecycle -----
    def item_added(
        self,
        item: dict[str, Any],
        previous_item_id: str | None,
        at_ms: int,
        *,
        is_summary: bool = False,
        is_memory: bool = False,
    ) -> Turn | None:
        """`conversation.item.added` (or the beta `.created`): place the item in both views.

        Summaries and the memory message are conversation state, not turns: they go into the
        context (at the root, where they were asked for) but not into the call's log."""
        item_id = item.get("id")
        if not isinstance(item_id, str):
            return None
        existing = self._turns.get(item_id)
        if existing is not None:
            return existing
        kind = item.get("type", "message")
        if kind != "message":
            return self._tool_item_added(item_id, item, previous_item_id, at_ms)
        raw_role = item.get("role") if item.get("type") == "message" else "assistant"
        role: Role = raw_role if raw_role in ("user", "assistant", "system") else "system"  # type: ignore[assignment]
        turn = Turn(item_id=item_id, role=role, at_ms=at_ms, kind=str(item.get("type", "message")))
        turn.is_summary = is_summary
        turn.is_memory = is_memory
        text = _content_text(item)
        if text is not None:
            turn.text = text
        elif role == "user" and any(
            isinstance(p, dict) and p.get("type") == "input_audio" for p in item.get("content") or []
        ):
            turn.transcript_status = "pending"
        if item_id in self._speech:
            turn.started_ms, turn.ended_ms = self._speech.pop(item_id)
        self._turns[item_id] = turn
        if is_summary or is_memory:
            previous_item_id = "root"  # we asked for the root; the event may report it as null
        self._insert(self.context, item_id, previous_item_id)
        if not (is_summary or is_memory):
            self._insert(self._log, item_id, previous_item_id)
        return turn

    def _tool_item_added(
        self, item_id: str, item: dict[str, Any], previous_item_id: str | None, at_ms: int
    ) -> Turn | None:
        """A function call, its output or an MCP call: context the model (and the in-call summary)
        keeps, as a system line; the ticket lists tool calls on their own, not as turns."""
        text = _tool_text(item)
        if text is None:
            return None  # e.g. an MCP server's tool list: nothing a summary needs
        turn = Turn(item_id=item_id, role="system", at_ms=at_ms, kind=str(item.get("type")), text=text)
        self._turns[item_id] = turn
        self._insert(self.context, item_id, previous_item_id)
        return turn

    @staticmethod
    def _insert(order: list[str], item_id: str, previous_item_id: str | None) -> None:
        if previous_item_id == "root":
            order.insert(0, item_id)
        elif previous_item_id and previous_item_id in order:
            order.insert(order.index(previous_item_id) + 1, item_id)
        else:
            order.append(item_id)

    def item_done(self, item: dict[str, Any]) -> Turn | None:
        """`conversation.item.done`: the item is final (and may now be summarised or deleted)."""
        turn = self._turns.get(str(item.get("id")))
        if turn is None:
            return None
        turn.done = True
        if turn.kind != "message":
            turn.text = _tool_text(item) or turn.text
            return turn
        text = _content_text(item)
        if text is not None and turn.role != "user" and not turn.interrupted:
            turn.text = text
        elif text is not None and turn.role == "user" and turn.transcript_status != "complete":
            turn.text, turn.transcript_status = text, "complete"
        return turn

    def item_deleted(self, item_id: str) -> Turn | None:
        """Mirror `conversation.item.deleted`: the turn leaves the context but stays in the log."""
        turn = self._turns.get(item_id)
        if turn is None:
            return None
        if item_id in self.context:
            self.context.remove(item_id)
        turn.in_context = False
        return turn

    # ----- when things were said (call ms; the caller computes them, this only records) -----
    def caller_speech(
        self, item_id: str, *, started_ms: int | None = None, stopped_ms: int | None = None
    ) -> None:
        """The VAD heard the caller start or stop speaking for the (future) item `item_id`.

        `speech_started`/`speech_stopped` come before the item is added, so the times wait
        here until `item_added` picks them up. Speech the server never commits (a cough, a
        cleared buffer) would otherwise leave an entry behind: only the latest few are kept.
        """
        turn = self._turns.get(item_id)
        span: list[int | None]
        if turn is not None:
            span = [turn.started_ms, turn.ended_ms]
        else:
            span = self._speech.pop(item_id, [None, None])
        if started_ms is not None:
            span[0] = started_ms
        if stopped_ms is not None:
            span[1] = stopped_ms if span[0] is None else max(span[0], stopped_ms)
        if turn is not None:
            turn.started_ms, turn.ended_ms = span
            return
        self._speech[item_id] = span
        while len(self._speech) > PENDING_SPEECH_KEPT:
            del self._speech[next(iter(self._speech))]

    def assistant_played(self, item_id: str, started_ms: int, ended_ms: int) -> None:
        """The caller heard this assistant item's audio from `started_ms` to `ended_ms` (so far)."""
        turn = self._turns.get(item_id)
        if turn is not None:
            if turn.started_ms is None:
                turn.started_ms = started_ms
            turn.ended_ms = ended_ms

    # ----- transcripts -----
    def user_transcript(self, item_id: str, text: str) -> None:
        turn = self._turns.get(item_id)
        if turn is not None:
            turn.text, turn.transcript_status = text, "complete"

    def user_transcript_failed(self, item_id: str) -> None:
        turn = self._turns.get(item_id)
        if turn is not None and turn.transcript_status != "complete":
            turn.transcript_status = "failed"

    def assistant_transcript_delta(self, item_id: str, delta: str) -> None:
        turn = self._turns.get(item_id)
        if turn is not None and not turn.interrupted:
            turn._deltas.append(delta)
            turn.text = "".join(turn._deltas)

    def assistant_transcript_done(self, item_id: str, transcript: str) -> None:
        turn = self._turns.get(item_id)
        if turn is not None and not turn.interrupted:
            turn.text = transcript

    def interrupted(self, item_id: str, heard_ms: int, generated_ms: int) -> None:
        """The caller talked over this assistant turn: keep only what was heard, and flag it."""
        turn = self._turns.get(item_id)
        if turn is None or turn.interrupted:
            return
        turn.interrupted = True
        turn.heard_ms = heard_ms
        turn.full_text = turn.text
        turn.text = _cut_to_heard(turn.text or "", heard_ms, generated_ms)

    # ----- usage -----
    def response_usage(self, usage: dict[str, Any], at_ms: int) -> None:
        """Add an in-conversation `response.done` usage; its total is the current context size.

        Each one is also kept on its own (`response_usages`), for the ticket's context chart and
        its cost (docs/protocols.md §11.1 names the fields)."""
        self.last_usage = usage
        inp = usage.get("input_token_details") or {}
        out = usage.get("output_token_details") or {}
        if not isinstance(inp, dict):
            inp = {}
        if not isinstance(out, dict):
            out = {}
        cached_details = inp.get("cached_tokens_details") or {}
        if not isinstance(cached_details, dict):
            cached_details = {}
        self.response_usages.append(
            ResponseUsage(
                at_ms=at_ms,
                input_tokens=_count(usage.get("input_tokens")),
                cached_tokens=_count(inp.get("cached_tokens")),
                input_text_tokens=_count(inp.get("text_tokens")),
                input_audio_tokens=_count(inp.get("audio_tokens")),
                output_text_tokens=_count(out.get("text_tokens")),
                output_audio_tokens=_count(out.get("audio_tokens")),
                cached_text_tokens=_count(cached_details.get("text_tokens")),
                cached_audio_tokens=_count(cached_details.get("audio_tokens")),
            )
        )
        u = self.usage
        self.usage = UsageTotals(
            responses=u.responses + 1,
            input_tokens=u.input_tokens + _count(usage.get("input_tokens")),
            output_tokens=u.output_tokens + _count(usage.get("output_tokens")),
            input_text_tokens=u.input_text_tokens + _count(inp.get("text_tokens")),
            input_audio_tokens=u.input_audio_tokens + _count(inp.get("audio_tokens")),
            cached_tokens=u.cached_tokens + _count(inp.get("cached_tokens")),
            output_text_tokens=u.output_text_tokens + _count(out.get("text_tokens")),
            output_audio_tokens=u.output_audio_tokens + _count(out.get("audio_tokens")),
            last_context_tokens=_count(usage.get("total_tokens")),
        )

    # ----- summaries -----
    def fold(self, event: SummaryEvent) -> None:
        """Record that `event.folded_item_ids` are covered by the summary `event.summary_id`."""
        self.summaries.append(event)
        for item_id in event.folded_item_ids:
            turn = self._turns.get(item_id)
            if turn is not None:
                turn.summary_id = event.summary_id

    def invariant_violations(self) -> list[str]:
        """Every turn is verbatim in the context or covered by a summary that is in the context.

        A summary may itself have been replaced by a later (rolled-up) summary; coverage is
        then transitive through the summary that folded it.
        """
        in_context = set(self.context)
        replaced_by = {sid: self._turns[sid].summary_id for sid in self._turns if self._turns[sid].is_summary}
        problems = []
        for turn in self.turns():
            if turn.item_id in in_context:
                continue
            sid = turn.summary_id
            seen = set()
            while sid is not None and sid not in in_context and sid not in seen:
                seen.add(sid)
                sid = replaced_by.get(sid)
            if sid is None or sid not in in_context:
                problems.append(f"{turn.role} turn {turn.item_id} is neither in context nor in a summary")
        return problems
