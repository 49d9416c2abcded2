"""Keeping a call alive across a lost or expiring Realtime session.

A phone line is not a chat window: when the Realtime websocket drops, or its session nears
the ~60 minute limit (docs/protocols.md §12.1), the call opens a fresh session, configures it again and
restores the context as text (the current summary as a system item, then the verbatim turns
in order) under the same item ids, so the local mirror and the new server agree at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from callbot.core import realtime as rt
from callbot.core.conversation import ConversationState
from callbot.core.memory import MEMORY_ITEM_ID, MemorySeed

UNTRANSCRIBED_CALLER = "[the caller spoke here; no transcript is available]"
SILENT_ASSISTANT = "[the assistant was interrupted before it said anything]"


@dataclass(frozen=True, slots=True)
class RecoveryPolicy:
    max_reconnects: int = 3
    """Attempts per outage; the counter resets once a new session is configured."""
    backoff_ms: tuple[int, ...] = (200, 1000, 3000)
    session_max_age_ms: int = 55 * 60_000
    """Roll over to a fresh session after this long, at a quiet moment."""
    rollover_grace_ms: int = 4 * 60_000
    """If nobody stops talking for this long past the age limit, roll over anyway."""
    twilio_idle_timeout_ms: int = 15_000
    """Twilio streams 50 frames a second, silence included: this long without one is a dead line."""

    def delay_ms(self, attempt: int) -> int:
        return self.backoff_ms[min(attempt, len(self.backoff_ms)) - 1] if self.backoff_ms else 0


def restore_events(conv: ConversationState, memory: MemorySeed | None = None) -> list[dict[str, Any]]:
    """Client events that rebuild the live context on a fresh session, in order.

    Turns already folded into a summary (whose delete had not gone through) are not restored:
    the summary covers them, so they leave the local context too. The returning caller's memory
    message is a system item like a summary and comes back in its place; if the old session was
    lost before it confirmed the memory item, it is created again at the root.
    """
    events: list[dict[str, Any]] = []
    if memory is not None and conv.get(MEMORY_ITEM_ID) is None:
        events.append(rt.system_message(MEMORY_ITEM_ID, memory.text, previous_item_id="root"))
    for item_id in list(conv.context):
        turn = conv.get(item_id)
        if turn is None:
            continue
        if turn.is_summary or turn.role == "system":
            events.append(rt.system_message(item_id, turn.text or "", previous_item_id=None))
        elif turn.summary_id is not None:
            conv.item_deleted(item_id)
        elif turn.role == "user":
            events.append(rt.user_text(item_id, turn.text or UNTRANSCRIBED_CALLER))
        else:
            events.append(rt.assistant_text(item_id, turn.text or SILENT_ASSISTANT))
    return events


class Reconnects:
    """Where the call stands with its upstream sessions: attempts in this outage, the live
    session's age, and whether the next configured session must get the context back."""

    def __init__(self, policy: RecoveryPolicy) -> None:
        self.policy = policy
        self.attempts = 0
        self.restoring = False
        self._session_started_ms = 0

    def next_delay_ms(self) -> int | None:
        """Count one more attempt in this outage: its backoff, or None once they are used up."""
        if self.attempts >= self.policy.max_reconnects:
            return None
        self.attempts += 1
        return self.policy.delay_ms(self.attempts)

    def session_ready(self, now_ms: int) -> None:
        """A session is configured: the outage (if any) is over and its age counts from now."""
        self.attempts = 0
        self._session_started_ms = now_ms

    def rollover_due(self, now_ms: int, *, busy: bool) -> bool:
        """Past the age limit: at a quiet moment, or regardless once the grace period is over."""
        policy = self.policy
        age = now_ms - self._session_started_ms
        if age < policy.session_max_age_ms:
            return False
        return not busy or age >= policy.session_max_age_ms + policy.rollover_grace_ms
