"""One call's summary lifecycle, from the policy's decision to the last delete.

plan (policy) -> RequestSummary -> the text model answers -> system item created at the root ->
the server confirms it (conversation.item.added) -> exactly the snapshotted items are deleted ->
the first response priced after the deletes reports the new context size.

It only tracks state and returns client events; CallSession wires it to the event stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from callbot.core import realtime as rt
from callbot.core.conversation import ConversationState
from callbot.core.record import SummaryEvent
from callbot.core.summary import SummaryPolicy, SummaryRequest, plan_summary, summary_item_text

log = logging.getLogger("callbot.summary")

CHECK_EVERY_MS = 500
"""How often the clock re-checks: a pending transcript may have arrived or its wait expired."""


@dataclass(frozen=True, slots=True)
class _Inserting:
    request: SummaryRequest
    text: str


class SummaryCoordinator:
    def __init__(self, policy: SummaryPolicy) -> None:
        self.policy = policy
        self._in_flight: SummaryRequest | None = None
        self._inserting: dict[str, _Inserting] = {}
        self._retry_at_ms = 0
        self._count = 0
        self._done_at: dict[str, int] = {}
        self._next_check_ms = 0
        self._usage_stale = False  # a summary changed the context since the last usage report
        self._priced_before: set[str] = set()  # responses whose usage predates our deletes
        self._awaiting_deletes: set[str] = set()

    @property
    def in_flight(self) -> SummaryRequest | None:
        """The summary being written or inserted right now, if any."""
        return self._in_flight

    # ----- deciding -----
    def plan(self, conv: ConversationState, now_ms: int) -> SummaryRequest | None:
        """A summary to request now, if one is due and none is running."""
        if self._in_flight is not None or self._usage_stale or now_ms < self._retry_at_ms:
            return None
        request = plan_summary(conv, self.policy, now_ms, self._done_at, self._count + 1)
        if request is not None:
            self._count += 1
            self._in_flight = request
        return request

    def check_due(self, now_ms: int) -> bool:
        if now_ms < self._next_check_ms:
            return False
        self._next_check_ms = now_ms + CHECK_EVERY_MS
        return True

    # ----- the text model's answer -----
    def answered(self, summary_id: str, text: str) -> dict[str, Any] | None:
        """The create event for the summary item, or None if this answer is stale or empty."""
        request = self._in_flight
        if request is None or request.summary_id != summary_id or not text.strip():
            return None
        item_text = summary_item_text(text)
        self._inserting[summary_id] = _Inserting(request, item_text)
        return rt.system_message(summary_id, item_text, previous_item_id="root")

    def failed(self, summary_id: str, reason: str, now_ms: int) -> None:
        """Nothing was deleted; try again after the backoff. The call goes on."""
        self._inserting.pop(summary_id, None)
        if self._in_flight is None or self._in_flight.summary_id != summary_id:
            return
        log.warning("summary %s failed (%s); retrying later", summary_id, reason)
        self._in_flight = None
        self._retry_at_ms = now_ms + self.policy.retry_after_ms

    def is_inserting(self, item_id: str) -> bool:
        return item_id in self._inserting

    @property
    def inserting(self) -> bool:
        """An answered summary is waiting for the server to confirm its item."""
        return bool(self._inserting)

    def insert_failed_for(self, client_event_id: str) -> str | None:
        """The summary whose create an `error` event refers to, if any."""
        for summary_id in self._inserting:
            if client_event_id == f"evt_create_{summary_id}":
                return summary_id
        return None

    def client_event_failed(self, client_event_id: str) -> str | None:
        """An `error` named this client event: settle its delete, if it was one; the summary whose
        insert failed, if it was that."""
        if client_event_id.startswith("evt_delete_"):
            self.delete_settled(client_event_id.removeprefix("evt_delete_"))
        return self.insert_failed_for(client_event_id)

    # ----- the server's side -----
    def confirmed(
        self, conv: ConversationState, item_id: str, now_ms: int, active_response: str | None
    ) -> list[dict[str, Any]]:
        """The summary item exists server-side: now (and only now) delete exactly the snapshot."""
        inserting = self._inserting.pop(item_id)
        request = inserting.request
        conv.fold(
            SummaryEvent(
                summary_id=request.summary_id,
                at_ms=now_ms,
                text=inserting.text,
                tokens_before=request.tokens_before,
                turns_folded=request.turns_folded,
                folded_item_ids=request.folded_item_ids,
            )
        )
        self._in_flight = None
        self._usage_stale = True
        if active_response is not None:  # already running: priced before the summary
            self._priced_before.add(active_response)
        in_context = set(conv.context)
        deletes = [i for i in request.folded_item_ids if i in in_context]
        self._awaiting_deletes.update(deletes)
        return [rt.delete(i) for i in deletes]

    def item_done(self, item_id: str, now_ms: int) -> None:
        self._done_at.setdefault(item_id, now_ms)

    def delete_settled(self, item_id: str) -> None:
        """A delete went through (conversation.item.deleted) or failed (error)."""
        self._awaiting_deletes.discard(item_id)

    def response_created(self, response_id: str | None) -> None:
        if self._awaiting_deletes and response_id:
            # created before the server applied our deletes: priced with the folded items
            self._priced_before.add(response_id)

    def response_usage(self, conv: ConversationState, response_id: str | None) -> None:
        """After conv.response_usage: the first fresh usage shows what the summary saved."""
        if response_id in self._priced_before:
            return
        self._usage_stale = False
        summaries = conv.summaries
        if summaries and summaries[-1].tokens_after is None:
            summaries[-1] = replace(summaries[-1], tokens_after=conv.context_tokens)

    def reset(self) -> None:
        """A new Realtime session: nothing of the old one is in flight any more."""
        self._priced_before.clear()
        self._awaiting_deletes.clear()
        self._inserting.clear()
        self._in_flight = None  # a late answer is ignored; the policy asks again later
        self._usage_stale = True
