"""The agent's audio on its way to the caller: converted, cut into 20 ms frames, paced to Twilio.

Realtime sends each assistant item's audio in deltas of any size, in the session's output format
(docs/protocols.md §4.3). Per item this converts it to mu-law 8 kHz (`OutboundConverter`), cuts
exact 160-byte frames (`Framer`), queues them in the `PlaybackTracker`, and turns what is due into
Twilio media and mark messages. It also counts the audio generated per item, which bounds the
truncation point on barge-in (docs/protocols.md §10.4).
"""

from __future__ import annotations

from dataclasses import dataclass

from callbot.core import twilio as tw
from callbot.core.actions import Action, SendTwilio
from callbot.core.audio import Framer, OutboundConverter
from callbot.core.conversation import ConversationState
from callbot.core.playback import FRAME_BYTES, PlaybackTracker
from callbot.core.realtime import AudioMode


@dataclass(frozen=True, slots=True)
class Cut:
    """What a barge-in cut: the item playing (if any), what of it was heard and generated."""

    item_id: str | None
    heard_ms: int
    generated_ms: int
    twilio_had_audio: bool
    first: bool
    """The first cut of this item: truncate it and flag the turn (later ones change nothing)."""


class OutboundAudio:
    """Also records, in the conversation, when the caller hears each assistant item."""

    def __init__(
        self,
        mode: AudioMode,
        conversation: ConversationState,
        *,
        lead_ms: int,
        mark_interval_ms: int,
        message_ms: int,
        prebuffer_ms: int = 0,
    ) -> None:
        self.playback = PlaybackTracker(
            lead_ms, mark_interval_ms, message_ms=message_ms, prebuffer_ms=prebuffer_ms
        )
        self._conversation = conversation
        self._converter = OutboundConverter(mode)
        self._framer = Framer(FRAME_BYTES)
        self._item: str | None = None  # the item whose audio is in the converter and framer
        self._generated_bytes: dict[str, int] = {}
        self._dropped: set[str] = set()  # interrupted items: their late audio does not play

    def is_dropped(self, item_id: str) -> bool:
        return item_id in self._dropped

    def generated_ms(self, item_id: str) -> int:
        """How much audio Realtime generated for this item, in the session's output format."""
        return self._generated_bytes.get(item_id, 0) // self._converter.bytes_per_ms

    def push(self, item_id: str, audio: bytes) -> None:
        """Queue one delta of `item_id`'s audio; a new item first finishes the previous one."""
        self._generated_bytes[item_id] = self._generated_bytes.get(item_id, 0) + len(audio)
        if self._item is not None and self._item != item_id:
            self.finish_item()
        self._item = item_id
        self.playback.enqueue(item_id, self._framer.push(self._converter.convert(audio)))

    def finish_item(self, item_id: str | None = None) -> bool:
        """End of the current item's audio (only if it is `item_id`, when given): flush the filter
        tail and pad the last partial frame. False if there was no such item to finish."""
        current = self._item
        if current is None or (item_id is not None and item_id != current):
            return False
        frames = self._framer.push(self._converter.flush())
        last = self._framer.flush()
        if last is not None:
            frames.append(last)
        self.playback.enqueue(current, frames)
        self.playback.end_item(current)
        self._converter.reset()
        self._item = None
        return True

    def send_due(self, now_ms: int, stream_sid: str, out: list[Action]) -> list[Action]:
        """Append the media and mark messages due now to `out`, and return it."""
        send = self.playback.send_at
        if send is None or send > now_ms:
            return out  # most deltas and ticks come while the lead is full: nothing to look at
        played: dict[str, None] = {}
        for message in self.playback.take_messages(now_ms):
            out.append(SendTwilio(tw.encode_media(stream_sid, message.audio)))
            if message.mark is not None:
                out.append(SendTwilio(tw.encode_mark(stream_sid, message.mark)))
            played[message.item_id] = None
        for item_id in played:
            self._note_played(item_id)
        return out

    def _note_played(self, item_id: str) -> None:
        span = self.playback.played_span(item_id)
        if span is not None:
            self._conversation.assistant_played(item_id, *span)

    def next_send_ms(self) -> int | None:
        """When `send_due` next has something to send, or None with nothing queued."""
        return self.playback.next_send_ms()

    def drained(self) -> bool:
        """Everything generated so far has played: nothing queued or being framed, every mark
        echoed since the last clear (docs/call-control.md §2)."""
        return self._item is None and self._framer.pending == 0 and self.playback.all_played()

    def is_audible(self, now_ms: int) -> bool:
        """The caller hears, or is about to hear, assistant audio."""
        return self.playback.is_playing(now_ms) or self._framer.pending > 0

    def interrupt(self, now_ms: int) -> Cut:
        """Barge-in: drop everything not yet played, and any more audio of the item cut (the one
        playing, or else the one still being framed)."""
        cut = self.playback.interrupt(now_ms)
        item_id = cut.item_id or self._item
        self._framer.clear()
        self._converter.reset()
        self._item = None
        if item_id is None:
            return Cut(None, cut.heard_ms, 0, cut.twilio_had_audio, first=False)
        self._note_played(item_id)  # the cut moved its end to now
        first = item_id not in self._dropped
        self._dropped.add(item_id)
        return Cut(item_id, cut.heard_ms, self.generated_ms(item_id), cut.twilio_had_audio, first)
